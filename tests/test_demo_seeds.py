"""comet-demo --seeds: one demo per seed (each exactly `comet-demo --seed N`, its artefacts
where that command puts them) and the min / mean over seeds of every cell in OUT/seeds.json."""

import json

from comet_jax.demo import cli, passkey_demo as demo, seeds
from test_demo import FakeChildren


class FakeSeedChildren(FakeChildren):
    """A seed's demo runs in-process; its "evaluation" scores 1.0, except seed 1: 0.5 at the
    first length (so min and mean differ)."""

    def __call__(self, cmd, tag="demo", cores=None):
        if cmd[1] == "comet_jax.demo.passkey_demo":
            self.demos.append(cmd[2:])
            assert demo.main(cmd[2:]) == 0
            return
        super().__call__(cmd, tag, cores)
        if cmd[1] == "comet_jax.evals.passkey" and "seed1" in cmd[cmd.index("--out") + 1]:
            path = self.evaluated[-1] / "results.json"
            res = json.loads(path.read_text())
            first = sorted(res["exact_by_length"], key=int)[0]
            res["exact_by_length"][first] = 0.5
            path.write_text(json.dumps(res))


def test_seeds_run_one_demo_each_and_write_the_spread(tmp_path, monkeypatch, capsys):
    from comet_jax.evals import passkey

    children = FakeSeedChildren()
    children.demos = []
    monkeypatch.setattr(demo, "run", children)
    monkeypatch.setattr(demo, "ship_model", lambda *a: None)  # the fake runs have no model (the quick demo test ships one)
    monkeypatch.setattr(demo, "plot", lambda results, out: None)
    monkeypatch.setattr(demo, "available_cores", lambda: [0])  # one seed at a time, in this process
    monkeypatch.setattr(passkey, "write_heatmap", lambda results, path: None)
    monkeypatch.chdir(tmp_path)
    work = tmp_path / "work"
    argv = ["--work", str(work), "--models", "comet", "--seeds", "0,1", "--held-out-mults", "1"]
    assert cli.main(argv) == 0
    assert children.demos == [["--work", str(work), "--models", "comet", "--held-out-mults", "1", "--seed", s,
                               "--jobs", "1"] for s in ("0", "1")]
    # each seed where `comet-demo --seed N` puts it: the default demo's directory for seed 0
    assert json.loads((tmp_path / "comet_demo" / "results.json").read_text())["seed"] == 0
    assert json.loads((tmp_path / "comet_demo" / "seed1" / "results.json").read_text())["seed"] == 1
    record = json.loads((tmp_path / "comet_demo" / "seeds.json").read_text())
    assert record["seeds"] == [0, 1] and record["train_seq_len"] == 512
    row = record["spread"]["CoMeT (memory)"]
    assert row["512"] == {"min": 0.5, "mean": 0.75, "seeds": 2} and row["16384"] == {"min": 1.0, "mean": 1.0,
                                                                                     "seeds": 2}
    assert record["spread"]["CoMeT (memory), held-out prompt"]["512"]["min"] == 0.5
    table = capsys.readouterr().out
    assert "| CoMeT (memory) | 0.50 / 0.75 | 1.00 / 1.00 |" in table

    assert cli.main(argv) == 0 and len(children.trained) == 2  # finished seeds are reused


def test_seeds_refusals(capsys):
    assert cli.main(["--seeds", "0,x"]) == 2
    assert "error: --seeds: comma-separated integers, got '0,x'" in capsys.readouterr().err
    assert cli.main(["--seeds", "1,1"]) == 2
    assert seeds.child_argv(["--seeds=0,1", "--out", "o", "--seed", "3", "--set", "a.b=1"], 2, None) == \
        ["--set", "a.b=1", "--seed", "2", "--jobs", "1"]
