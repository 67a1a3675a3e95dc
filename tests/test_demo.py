"""comet-demo (comet_jax/demo/passkey_demo.py) --quick: three tiny models trained and
evaluated end to end, every artefact written (the full demo is the accuracy check; see
docs/demo/)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from xla_env import xla_flags

from comet_jax.bundled import config_path
from comet_jax.demo import passkey_demo as demo
from comet_jax.demo import report

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "XLA_FLAGS": xla_flags(1), "JAX_PLATFORMS": "cpu"}
DEMO = [sys.executable, "-m", "comet_jax.demo.passkey_demo"]


def test_quick_demo_writes_every_artefact(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.run([*DEMO, "--quick", "--out", str(out), "--work", str(work)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {"results.json", "accuracy_vs_length.png", "train_loss.png", "heatmap_comet.png", "heatmap_full.png",
             "heatmap_nomem.png"}
    assert names <= {p.name for p in out.iterdir()}
    res = json.loads((out / "results.json").read_text())
    assert set(res["models"]) == {"comet", "full", "nomem"}
    for name, r in res["models"].items():
        assert len(r["cells"]) == 2 * 2 and r["train_loss"]["steps"] == [1, 2, 3, 4]
        assert r["train"]["mode"] == ("full" if name == "full" else "comet")
    assert "| CoMeT (memory) |" in proc.stdout and "| CoMeT (memory), held-out prompt |" in proc.stdout
    assert "[comet] " in proc.stderr and "[nomem] " in proc.stderr  # child output, prefixed
    # the children are package modules: no checkout needed
    assert "$ python -m comet_jax.train.cli " in proc.stderr and "$ python -m comet_jax.evals.passkey " in proc.stderr
    assert set(res["models"]["comet"]["held_out"]["exact_by_length"]) == set(res["models"]["comet"]["accuracy_by_length"])
    assert res["seed"] == 0
    # the trained CoMeT model beside its numbers, with a card (docs/demo/model for the default demo)
    model = out / "model"
    assert {"comet_jax.json", "tokenizer.json", "params", "README.md"} <= {p.name for p in model.iterdir()}
    assert not (out / "model.tmp").exists() and not (out / "model.old").exists()
    card = (model / "README.md").read_text()
    assert "(seed 0)" in card and "`comet-demo --seed 0 --quick`" in card and f"--checkpoint {model} --lengths 128,4096" in card and "| held-out wording |" in card
    assert "4 steps" in card
    # the last model to start (nomem, with 2+ cores) runs on every core
    assert "training nomem (CoMeT, memory off) on every core" in proc.stderr or len(os.sched_getaffinity(0)) < 2


def test_bad_arguments(tmp_path):
    env = {**ENV, "PYTHONPATH": str(ROOT)}  # outside the checkout
    proc = subprocess.run([*DEMO, "--models", "comet,bogus"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--models" in proc.stderr
    proc = subprocess.run([*DEMO, "--held-out-mults", "1,x"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--held-out-mults" in proc.stderr
    # the alias in eval/ passes its arguments on
    proc = subprocess.run([sys.executable, "-m", "eval.demo", "--jobs", "-1"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--jobs" in proc.stderr


def test_defaults_find_the_bundled_config_and_pick_the_output_directories(tmp_path, monkeypatch):
    assert config_path("demo_passkey.yaml") == ROOT / "configs" / "demo_passkey.yaml"  # a checkout
    with pytest.raises(FileNotFoundError, match="no bundled config nope.yaml"):
        config_path("nope.yaml")
    monkeypatch.chdir(tmp_path)
    assert demo.default_dirs() == ("comet_demo", "comet_demo/runs")
    monkeypatch.chdir(ROOT)
    assert demo.default_dirs() == ("docs/demo", "runs/demo")


@pytest.mark.parametrize("argv, message", [(["--multipliers", "0,4"], "--multipliers must be positive"),
                                           (["--multipliers", ""], "--multipliers must be positive"),
                                           (["--multipliers", "1,four"], "--multipliers: comma-separated"),
                                           (["--held-out-mults", "-1"], "--held-out-mults must be positive")])
def test_bad_multipliers_exit_2_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        demo.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_table_marks_held_out_lengths_not_run():
    def res(by):
        return {"accuracy_by_length": {str(n): a for n, a in by.items()},
                "exact_by_length": {str(n): a / 2 for n, a in by.items()}}

    comet = res({512: 1.0, 2048: 0.8, 16384: 0.6}) | {"held_out": res({512: 0.4})}
    table = report.summary_table({"train_seq_len": 512, "models": {"comet": comet}})
    assert "| CoMeT (memory) | 0.50 (1.00) | 0.40 (0.80) | 0.30 (0.60) |" in table
    assert "| CoMeT (memory), held-out prompt | 0.20 (0.40) | not run | not run |" in table


def test_core_groups_split_the_cores(monkeypatch):
    monkeypatch.setattr(demo, "available_cores", lambda: [0, 1, 2, 3, 4, 5, 6, 7])
    assert demo.core_groups(3) == [[0, 1], [2, 3, 4], [5, 6, 7]]
    assert demo.core_groups(1) == [[0, 1, 2, 3, 4, 5, 6, 7]]
    monkeypatch.setattr(demo, "available_cores", lambda: [0, 1])
    assert demo.core_groups(2) == [[0], [1]]
    assert demo.core_groups(3) == [[0], [1], [0]]


def test_a_finished_run_is_reused_only_with_the_same_config(tmp_path):
    from comet_jax.train.train_config import dump_yaml, load_config

    config, sets = str(ROOT / "configs" / "demo_passkey.yaml"), ["run.seed=0", "train.steps=4"]
    assert not demo.same_config(tmp_path, config, sets)  # no run there
    (tmp_path / "config.yaml").write_text(dump_yaml(load_config(config, sets)))
    assert demo.same_config(tmp_path, config, sets)
    assert not demo.same_config(tmp_path, config, ["run.seed=1", "train.steps=4"])
    assert not demo.same_config(tmp_path, config, sets + ["data.passkey.questions=2"])


class FakeChildren:
    """demo.run without child processes: "training" writes what a finished run has (its
    config.yaml as the trainer writes it, model/, metrics.jsonl), "evaluation" a results.json."""

    def __init__(self):
        self.trained, self.evaluated = [], []

    def __call__(self, cmd, tag="demo", cores=None):
        from comet_jax.train.train_config import dump_yaml, load_config

        if cmd[1] == "comet_jax.train.cli":
            overrides = cmd[4:]
            run_dir = Path(next(o for o in overrides if o.startswith("run.dir=")).split("=", 1)[1])
            (run_dir / "model").mkdir(parents=True, exist_ok=True)
            (run_dir / "model" / "comet_jax.json").write_text("{}")
            (run_dir / "config.yaml").write_text(dump_yaml(load_config(cmd[3], overrides)))
            (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
            self.trained.append(run_dir)
        else:
            out = Path(cmd[cmd.index("--out") + 1])
            lengths = cmd[cmd.index("--lengths") + 1].split(",")
            out.mkdir(parents=True, exist_ok=True)
            assert not (out / "results.json").exists()  # comet-passkey would refuse it
            depths = [float(d) for d in cmd[cmd.index("--depths") + 1].split(",")]
            (out / "results.json").write_text(json.dumps({"accuracy_by_length": {n: 1.0 for n in lengths},
                                                          "depths": depths,
                                                          "exact_by_length": {n: 1.0 for n in lengths},
                                                          "cells": []}))
            self.evaluated.append(out)


def test_runs_of_other_settings_keep_their_own_directories(tmp_path, monkeypatch, capsys):
    """`comet-demo --seed 1` after the default demo deleted the seed-0 runs (their config
    differs); now it trains into WORK/{model}-seed1 and only --retrain deletes."""
    from comet_jax.evals import passkey

    children = FakeChildren()
    monkeypatch.setattr(demo, "run", children)
    monkeypatch.setattr(demo, "ship_model", lambda *a: None)  # the fake runs have no model (the quick demo test ships one)
    monkeypatch.setattr(demo, "plot", lambda results, out: None)
    monkeypatch.setattr(passkey, "write_heatmap", lambda results, path: None)
    monkeypatch.chdir(tmp_path)  # the default --out: comet_demo (and comet_demo/{tag})
    work = tmp_path / "work"
    base = ["--work", str(work), "--models", "comet", "--jobs", "1"]

    assert demo.main(base) == 0
    seed0 = (work / "comet" / "config.yaml").read_text()
    assert children.trained == [work / "comet"] and (work / "passkey_comet" / "results.json").is_file()
    assert json.loads((tmp_path / "comet_demo" / "results.json").read_text())["seed"] == 0

    assert demo.main(base + ["--seed", "1"]) == 0
    assert (work / "comet" / "config.yaml").read_text() == seed0 and (work / "comet" / "model").is_dir()
    assert children.trained[1:] == [work / "comet-seed1"]
    assert {p.name for p in work.iterdir()} == {"comet", "comet-seed1", "passkey_comet", "passkey_comet_held_out",
                                                "passkey_comet-seed1", "passkey_comet-seed1_held_out"}
    assert json.loads((tmp_path / "comet_demo" / "seed1" / "results.json").read_text())["seed"] == 1
    assert json.loads((tmp_path / "comet_demo" / "results.json").read_text())["seed"] == 0

    recorded = json.loads((work / "comet" / demo.TRAIN_TIME).read_text())["train_seconds"]
    assert json.loads((tmp_path / "comet_demo" / "results.json").read_text())["models"]["comet"][
        "train_seconds"] == recorded
    (work / "comet" / demo.TRAIN_TIME).write_text(json.dumps({"train_seconds": 987.6}))
    assert demo.main(base) == 0 and len(children.trained) == 2  # the finished seed-0 run is reused
    # with the time it took to train, not the instant it took to reuse
    assert json.loads((tmp_path / "comet_demo" / "results.json").read_text())["models"]["comet"][
        "train_seconds"] == 987.6
    (work / "comet" / demo.TRAIN_TIME).unlink()  # a run trained by hand: its step times
    (work / "comet" / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "loss": 1.0, "step_time": 1.5}) + "\n"
                                                          for i in (1, 2)))
    assert demo.main(base) == 0 and demo.recorded_train_seconds(work / "comet") == 3.0
    assert json.loads((tmp_path / "comet_demo" / "results.json").read_text())["models"]["comet"][
        "train_seconds"] == 3.0
    capsys.readouterr()

    (work / "comet" / "config.yaml").write_text(seed0 + "# another config\n")  # e.g. an older bundled config
    assert demo.main(base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {work / 'comet'} holds a finished run trained with another config (see its "
                   "config.yaml): pass --retrain to delete it and train again, or give another --work"]
    assert (work / "comet" / "model").is_dir() and len(children.trained) == 2
    assert demo.main(base + ["--retrain"]) == 0
    assert children.trained[2:] == [work / "comet"] and (work / "comet-seed1" / "model").is_dir()
    config = str(config_path("demo_passkey.yaml"))

    def tag(*argv):
        return demo.run_tag(demo.build_parser().parse_args(["--config", config, *argv]), config)

    assert tag() == "" and tag("--seed", "3") == "seed3" and tag("--quick") == "quick"
    assert tag("--set", "train.steps=7") != tag("--set", "train.steps=8")
    assert tag("--quick", "--seed", "2", "--set", "train.steps=7").startswith("quick-seed2-")


def test_a_demo_of_fewer_models_keeps_the_other_models_rows(tmp_path, monkeypatch):
    """`comet-demo --models comet` (one seed of `--seeds`) after `comet-demo`: the baselines'
    rows stay in results.json when it was written with the same settings and their runs are
    the ones that scored them; with other settings, or a run trained again since, they go."""
    from comet_jax.evals import passkey

    children = FakeChildren()
    monkeypatch.setattr(demo, "run", children)
    monkeypatch.setattr(demo, "ship_model", lambda *a: None)
    monkeypatch.setattr(demo, "plot", lambda results, out: None)
    monkeypatch.setattr(passkey, "write_heatmap", lambda results, path: None)
    work, out = tmp_path / "work", tmp_path / "out"
    base = ["--work", str(work), "--out", str(out), "--jobs", "1"]

    def rows():
        res = json.loads((out / "results.json").read_text())
        return list(res["models"]), res.get("kept_from_earlier")

    assert demo.main(base + ["--models", "full,comet"]) == 0 and rows() == (["comet", "full"], None)
    full_row = json.loads((out / "results.json").read_text())["models"]["full"]
    assert demo.main(base + ["--models", "comet"]) == 0 and rows() == (["comet", "full"], ["full"])
    assert json.loads((out / "results.json").read_text())["models"]["full"] == full_row
    assert sum(p.name == "passkey_full" for p in children.evaluated) == 1  # kept, not evaluated again
    assert demo.main(base + ["--models", "comet", "--depths", "0,1"]) == 0 and rows() == (["comet"], None)
    assert demo.main(base + ["--models", "full,comet"]) == 0 and rows() == (["comet", "full"], None)
    (work / "full" / "config.yaml").write_text("# trained again with another config\n")
    assert demo.main(base + ["--models", "comet"]) == 0 and rows() == (["comet"], None)


def test_quickstart_replaces_only_its_own_output(tmp_path, capsys):
    from comet_jax.demo import quickstart

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("years of work")
    assert quickstart.main(["--out", str(theirs)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --out {theirs} is not empty and not the output of an "
                                               "earlier comet-quickstart")
    assert [p.name for p in theirs.iterdir()] == ["thesis.tex"]

    earlier = tmp_path / "qs"  # an earlier quickstart's output, and a file the user put there
    for name in ("hf_llama", "checkpoint"):
        (earlier / name).mkdir(parents=True)
        (earlier / name / "f").write_text("old")
    (earlier / "data.jsonl").write_text("old")
    quickstart.claim_out(earlier)  # what that quickstart wrote (before the marker existed): replaced
    assert sorted(p.name for p in earlier.iterdir()) == [quickstart.MARKER]
    (earlier / "checkpoint").mkdir()
    (earlier / "notes.md").write_text("mine")
    quickstart.claim_out(earlier)
    assert sorted(p.name for p in earlier.iterdir()) == [quickstart.MARKER, "notes.md"]
    quickstart.claim_out(tmp_path / "new")
    assert [p.name for p in (tmp_path / "new").iterdir()] == [quickstart.MARKER]
