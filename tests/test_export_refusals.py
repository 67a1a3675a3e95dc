"""`python -m comet_jax.export` refuses bad input in one line with exit 2 and writes nothing;
a killed export leaves nothing at DST and the next one cleans up after it."""

import os
import signal
import subprocess
import sys
import time

import pytest

import hf_models
from comet_jax.convert.hf_import import convert
from comet_jax.export.__main__ import main
from comet_jax.export.write import PAUSE_ENV

quiet = dict(log=lambda m: None)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A Llama converted with memory, and one without."""
    base = tmp_path_factory.mktemp("export_refusals")
    src = hf_models.save(hf_models.build(hf_models.llama_config()), base / "src")
    convert(src, base / "memory", chunk_size=16, global_size=2, stride=4, budget=8, **quiet)
    convert(src, base / "plain", global_size=0, stride=-1, **quiet)
    return base


CASES = {
    "not_a_checkpoint": ([], "neither a converted checkpoint"),
    "missing_src": ([], "does not exist"),
    "official_llama": (["--layout", "official"], "use --layout native"),
    "plain_with_memory": (["--layout", "plain"], "pass --drop-memory"),
    "drop_memory_official": (["--drop-memory", "--layout", "native"], "--drop-memory writes the plain layout"),
    "official_without_memory": (["--layout", "official"], "needs memory nets"),
    "step_on_a_checkpoint": (["--step", "3"], "--step is for a training run directory"),
    "raw_on_a_checkpoint": (["--raw"], "--raw is for a training run directory"),
    "bad_shard_size": (["--shard-size", "lots"], "is not a size"),
    "dst_exists": ([], "already exists; pass --overwrite"),
    "dst_inside_src": ([], "inside it"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_writes_nothing(ckpts, tmp_path, capsys, case):
    flags, expect = CASES[case]
    src = ckpts / ("plain" if case == "official_without_memory" else "memory")
    dst = tmp_path / "hf"
    if case == "not_a_checkpoint":
        src = tmp_path / "junk"
        src.mkdir()
        (src / "notes.txt").write_text("x")
    if case == "missing_src":
        src = tmp_path / "nope"
    if case == "dst_exists":
        dst.mkdir()
        (dst / "keep").write_text("x")
    if case == "dst_inside_src":
        dst = src / "hf"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main([str(src), str(dst), "--quiet", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no DST, no temporary
    if case == "dst_exists":
        assert [p.name for p in dst.iterdir()] == ["keep"]
    if case == "dst_inside_src":
        assert not dst.exists()


def test_kill_9_leaves_nothing_at_dst_and_the_next_export_cleans_up(ckpts, tmp_path):
    dst = tmp_path / "hf"
    env = {**os.environ, PAUSE_ENV: "0.5"}
    proc = subprocess.Popen([sys.executable, "-m", "comet_jax.export", str(ckpts / "memory"), str(dst), "--quiet",
                             "--shard-size", "10KB"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        tmp = [p for p in tmp_path.iterdir() if p.name.startswith(".hf.tmp-")]
        if tmp and any(p.suffix == ".safetensors" for p in tmp[0].iterdir()):
            break  # a shard is being written
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not dst.exists()
    assert main([str(ckpts / "memory"), str(dst), "--quiet"]) == 0
    assert (dst / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # the killed export's temporary is gone
