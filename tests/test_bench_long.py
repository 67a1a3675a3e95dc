"""eval/bench_long.py (and its child side, eval/bench_long_child.py): a tiny end-to-end run
writes results.json and the plot; bad arguments exit non-zero with a message."""

import json

import pytest

from comet_jax.evals import common
from eval import bench_long


def test_tiny_run_writes_results_and_plot(tmp_path, capsys):
    out = tmp_path / "bench"
    # a tiny --full-limit-s: full mode runs 512, then is skipped at 1k (predicted too slow)
    rc = bench_long.main(["--lengths", "512,1k", "--modes", "comet,full", "--decode-tokens", "2",
                          "--preset", "tiny", "--block-chunks", "4", "--full-limit-s", "0.001", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert {"date", "device", "config", "measurements", "targets", "timing"} <= set(res)
    assert set(res["targets"]) == {"comet_linear_time", "comet_flat_memory", "comet_speedup_64k"}
    rows = {(r["mode"], r["length"]): r for r in res["measurements"]}
    assert set(rows) == {("comet", 512), ("comet", 1024), ("full", 512), ("full", 1024)}
    assert rows["full", 1024]["status"] == "skipped" and "predicted" in rows["full", 1024]["reason"]
    for key in [("comet", 512), ("comet", 1024), ("full", 512)]:
        r = rows[key]
        assert r["status"] == "ok", r
        for k in ("prefill_s", "tokens_per_s", "peak_rss_mb", "decode_ms_per_token", "compile_s", "state_mb"):
            assert r[k] > 0, (k, r)
        assert r["decode_tokens"] == 2
    # comet state does not grow with the prompt
    assert rows["comet", 512]["state_mb"] == rows["comet", 1024]["state_mb"]
    assert res["targets"]["comet_linear_time"]["verdict"] in ("PASS", "FAIL")
    assert res["targets"]["comet_speedup_64k"]["verdict"] == "n/a"
    assert (out / "bench_long.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    assert "prefill s" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--lengths", "8q"], "bad length"),
    (["--lengths", "0"], "must be >= 1"),
    (["--lengths", ","], "empty"),
    (["--modes", "comet,fast"], "bad --modes"),
    (["--decode-tokens", "0"], "must be >= 1"),
    (["--budget", "0"], "budget must be > 0"),
])
def test_bad_arguments_exit_nonzero(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench_long.main(args)
    assert e.value.code != 0
    assert message in capsys.readouterr().err


def test_length_suffixes():
    assert bench_long.parse_lengths("8k,1M,512,32K,1m") == [512, 8192, 32768, 1 << 20]
    assert common.format_length(1 << 20) == "1M" and common.format_length(65536) == "64k"
