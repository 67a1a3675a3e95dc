"""eval.pipeline_plan: the accounting a user sizes a pod slice with."""

import pytest

from eval import pipeline_plan


def test_plan_table(capsys):
    assert pipeline_plan.main(["--config", "configs/tiny_cpu.yaml", "--stages", "1,2,4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [list(map(float, line.split())) for line in lines[2:]]
    L = 4
    for p, chunks, idle, params, act, p2p, weights in rows:
        assert abs(idle - (p - 1) / (L + p - 1)) < 1e-3
        assert (p2p > 0) == (p > 1) and (weights > 0) == (p > 1)
    acts = [r[4] for r in rows]
    assert acts[0] > acts[1] > acts[2]  # activation memory falls with P
    # parameters are split over stages (the table prints 3 decimals)
    assert rows[1][3] * 2 == pytest.approx(rows[0][3], abs=2e-3) and rows[2][3] * 4 == pytest.approx(rows[0][3], abs=4e-3)


def test_bad_key(capsys):
    assert pipeline_plan.main(["--config", "configs/tiny_cpu.yaml", "mesh.stagez=2"]) == 2
    assert "mesh.stagez" in capsys.readouterr().err
