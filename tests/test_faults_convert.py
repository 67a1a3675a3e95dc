"""Converter faults: stopped or killed runs, a destination that overlaps the source, a
truncated shard, a config.json that contradicts the tensors or is not JSON, an unwritable
destination; and the source's context length kept in the meta."""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import save_file
from test_convert_memory import write_llama

from comet_jax import checkpoint
from comet_jax.convert.__main__ import main
from comet_jax.convert.hf_import import PAUSE_ENV, convert
from comet_jax.vocab import padded_vocab

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
    shutil.copytree(src, copy)
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
    shutil.copytree(src, copy)
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


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """One shard, 2 layers, hidden 128: 2 heads and 1 KV head of head_dim 64, MLP width 64."""
    path = tmp_path_factory.mktemp("faults_wide") / "src"
    write_llama(path, layers=2, hidden=128, inter=64, vocab=200)
    assert [p.name for p in path.glob("*.safetensors")] == ["model-00001.safetensors"]
    return path


def refused(src, tmp_path, capsys, *flags):
    """Run the converter on SRC; it must exit 2 with one `error: ` line and write nothing."""
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main([str(src), str(tmp_path / "dst"), "--quiet", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no DST, no temporary
    return err


def edited_copy(src, tmp_path, **settings):
    copy = tmp_path / "src"
    shutil.copytree(src, copy)
    cfg = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**cfg, **settings}))
    return copy


SHAPE_CASES = {  # setting: (value, tensor refused, its shape, the shape config.json implies, what the tensor fits)
    "hidden_size": (64, "model.embed_tokens.weight", (200, 128), (200, 64), "hidden_size=128"),
    "num_key_value_heads": (2, "model.layers.0.self_attn.k_proj.weight", (64, 128), (128, 128),
                            "num_key_value_heads*head_dim=64"),
    "num_attention_heads": (4, "model.layers.0.self_attn.q_proj.weight", (128, 128), (256, 128),
                            "num_attention_heads*head_dim=128"),
    "head_dim": (32, "model.layers.0.self_attn.q_proj.weight", (128, 128), (64, 128),
                 "num_attention_heads*head_dim=128"),
    "intermediate_size": (128, "model.layers.0.mlp.gate_proj.weight", (64, 128), (128, 128),
                          "intermediate_size=64"),
    "vocab_size": (100, "model.embed_tokens.weight", (200, 128), (100, 128), "vocab_size=200"),
}


@pytest.mark.parametrize("setting", SHAPE_CASES)
def test_config_contradicting_the_tensors_is_refused(wide, tmp_path, capsys, setting):
    value, name, shape, implied, fits = SHAPE_CASES[setting]
    src = edited_copy(wide, tmp_path, **{setting: value})
    err = refused(src, tmp_path, capsys, "--chunk-size", "64", "--global-size", "4", "--stride", "8",
                  "--budget", "16")
    assert err.startswith(f"error: {src / 'model-00001.safetensors'}: tensor {name} has shape {shape}, "
                          f"config.json ("), err
    assert f"{setting}={value}" in err and f") implies {implied}; the tensor fits {fits}: correct config.json" in err


def test_tensors_beyond_num_hidden_layers_are_refused(wide, tmp_path, capsys):
    src = edited_copy(wide, tmp_path, num_hidden_layers=1)
    err = refused(src, tmp_path, capsys)
    assert (f"{src / 'model-00001.safetensors'}: tensor model.layers.1.self_attn.q_proj.weight (and 8 more, for "
            "layer 1) is beyond the model's layers: config.json (num_hidden_layers=1)") in err, err
    assert "fit num_hidden_layers=2" in err


def test_tensor_the_architecture_has_no_place_for_is_refused(wide, tmp_path, capsys):
    src = edited_copy(wide, tmp_path)
    save_file({"model.layers.0.self_attn.q_norm.weight": np.ones(64, np.float32)}, src / "extra.safetensors")
    index = json.loads((src / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.0.self_attn.q_norm.weight"] = "extra.safetensors"
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    err = refused(src, tmp_path, capsys)
    assert f"{src / 'extra.safetensors'}: tensor model.layers.0.self_attn.q_norm.weight has no place in a " \
           "LlamaForCausalLM" in err, err


def test_consistent_source_converts(wide, tmp_path):
    """The shape check refuses nothing that is right: the same source as above, unedited."""
    convert(wide, tmp_path / "dst", chunk_size=64, global_size=4, stride=8, budget=16, **quiet)
    model, _, _ = checkpoint.read_meta(tmp_path / "dst")
    assert (model.hidden_size, model.intermediate_size, model.vocab_size) == (128, 64, padded_vocab(200 + 6))


@pytest.mark.parametrize("text, where", [("{\"hidden_size\": 64,\n", "line 2 column 1"),
                                         ("[1, 2]", "not a JSON object"),
                                         ("\xff\xfe{}", "not UTF-8")])
def test_config_that_is_not_json_is_named(wide, tmp_path, capsys, text, where):
    src = edited_copy(wide, tmp_path)
    (src / "config.json").write_bytes(text.encode("latin-1"))
    err = refused(src, tmp_path, capsys)
    assert err.startswith(f"error: {src / 'config.json'} is not ") and where in err, err


@pytest.mark.parametrize("fault", ["read_only_parent", "disk_full"])
def test_unwritable_destination_is_one_line_error(wide, tmp_path, capsys, monkeypatch, fault):
    parent = tmp_path / "out"
    parent.mkdir()
    if fault == "disk_full":
        def full(self, path, value):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(checkpoint.StreamingWriter, "write", full)
        reason = os.strerror(errno.ENOSPC)
    elif os.geteuid() == 0:  # root writes through permission bits: fail the temporary's creation instead
        def denied(*args, dir=None, **kw):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), dir)
        monkeypatch.setattr(checkpoint.tempfile, "mkdtemp", denied)
        reason = os.strerror(errno.EACCES)
    else:
        parent.chmod(0o555)
        reason = os.strerror(errno.EACCES)
    try:
        assert main([str(wide), str(parent / "dst"), "--quiet"]) == 2
    finally:
        parent.chmod(0o755)
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {parent / 'dst'}: {reason}") and err.count("\n") == 1, err
    assert list(parent.iterdir()) == []
