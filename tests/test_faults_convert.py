"""Converter faults: stopped or killed runs, a destination that overlaps the source, a
truncated shard; and the source's context length kept in the meta."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from test_convert_memory import write_llama

from comet_jax import checkpoint
from comet_jax.convert.__main__ import main
from comet_jax.convert.hf_import import PAUSE_ENV, convert

quiet = dict(log=lambda m: None)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "src"
    write_llama(path, layers=2, hidden=64, inter=128, vocab=300, shard_bytes=100_000, max_position_embeddings=4096)
    assert len(list(path.glob("*.safetensors"))) >= 3
    return path


def temporaries(parent, name="dst"):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def start_paused(src, dst):
    """A converter subprocess that sleeps after each leaf; returns once its temporary exists."""
    # Ctrl-C as in a terminal: a shell starts background jobs with SIGINT ignored, which the
    # child would inherit (and keep ignoring, as it should), so a suite run with `&` would hang here
    run_as_main = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                   "sys.argv[0] = 'comet_jax.convert'; runpy.run_module('comet_jax.convert', run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", run_as_main, str(src), str(dst), "--quiet"],
                            env={**os.environ, PAUSE_ENV: "60", "PYTHONFAULTHANDLER": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not temporaries(dst.parent):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    [tmp] = temporaries(dst.parent)
    assert tmp.startswith(f".dst.tmp-{proc.pid}@{socket.gethostname()}-")  # named after its writer
    return proc


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 130)])
def test_stopped_conversion_removes_its_temporary(src, tmp_path, sig, code):
    proc = start_paused(src, tmp_path / "dst")
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # show where it waits (faulthandler), e.g. a SIGINT it ignored
        proc.send_signal(signal.SIGABRT)
        pytest.fail(f"no exit within 60 s of {sig.name}; its threads:\n{proc.communicate()[1][-8000:]}")
    assert proc.returncode == code, err
    assert list(tmp_path.iterdir()) == []


def test_next_run_removes_what_a_killed_run_left(src, tmp_path):
    proc = start_paused(src, tmp_path / "dst")
    proc.kill()  # SIGKILL: no handler runs, the temporary stays
    proc.wait()
    assert len(temporaries(tmp_path)) == 1
    # not touched: a writer that is still running, and one on another machine (shared storage)
    kept = [f".dst.tmp-{os.getpid()}@{socket.gethostname()}-live", f".dst.tmp-{proc.pid}@elsewhere.example-xyz"]
    for name in kept:
        (tmp_path / name).mkdir()
    convert(src, tmp_path / "dst", **quiet)
    assert temporaries(tmp_path) == sorted(kept)
    assert (tmp_path / "dst" / checkpoint.META_FILE).is_file()


@pytest.mark.parametrize("case", ["same", "inside", "same_via_symlink", "src_inside_dst"])
def test_destination_overlapping_the_source_is_refused(src, tmp_path, case, capsys):
    copy = tmp_path / "models" / "src"
    copy.parent.mkdir()
    subprocess.run(["cp", "-r", str(src), str(copy)], check=True)
    before = {p: p.read_bytes() for p in copy.iterdir()}
    (tmp_path / "link").symlink_to(copy)
    dst = {"same": copy, "inside": copy / "converted", "same_via_symlink": tmp_path / "link",
           "src_inside_dst": copy.parent}[case]
    assert main([str(copy), str(dst), "--overwrite", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert ("inside DST" if case == "src_inside_dst" else "is the source directory") in err
    assert {p: p.read_bytes() for p in copy.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "models"]
    assert sorted(p.name for p in copy.parent.iterdir()) == ["src"]


def test_truncated_shard_is_one_line_error(src, tmp_path, capsys):
    copy = tmp_path / "src"
    subprocess.run(["cp", "-r", str(src), str(copy)], check=True)
    shard = sorted(copy.glob("*.safetensors"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 2])
    assert main([str(copy), str(tmp_path / "dst"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and shard.name in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_source_context_length_is_kept_in_the_meta(src, tmp_path):
    convert(src, tmp_path / "with", **quiet)
    assert checkpoint.read_meta(tmp_path / "with")[2]["max_position_embeddings"] == 4096
    other = tmp_path / "without"
    subprocess.run(["cp", "-r", str(src), str(other)], check=True)
    cfg = json.loads((other / "config.json").read_text())
    del cfg["max_position_embeddings"]
    (other / "config.json").write_text(json.dumps(cfg))
    convert(other, tmp_path / "out", **quiet)
    assert "max_position_embeddings" not in checkpoint.read_meta(tmp_path / "out")[2]
