"""eval.pipeline_plan: the accounting a user sizes a pod slice with."""

from eval import pipeline_plan


def test_plan_table(capsys):
    assert pipeline_plan.main(["--config", "configs/tiny_cpu.yaml", "--stages", "1,2,4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [list(map(float, line.split())) for line in lines[2:]]
    L = 4
    for p, chunks, idle, params, act, p2p in rows:
        assert abs(idle - (p - 1) / (L + p - 1)) < 1e-3
        assert (p2p > 0) == (p > 1)
    acts = [r[4] for r in rows]
    assert acts[0] > acts[1] > acts[2]  # activation memory falls with P
    assert len({r[3] for r in rows}) == 1  # parameters are replicated over stages


def test_bad_key(capsys):
    assert pipeline_plan.main(["--config", "configs/tiny_cpu.yaml", "mesh.stagez=2"]) == 2
    assert "mesh.stagez" in capsys.readouterr().err
