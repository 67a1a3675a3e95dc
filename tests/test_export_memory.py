"""The export streams: exporting a model of several shards grows the exporter's anonymous
memory by a few of the checkpoint's blocks (each chunk read, its decoded and compressed
copies, a transposed copy of one layer), less than one shard and not by the model.

Peaks are RssAnon sampled from /proc, as tests/test_convert_memory.py does for the converter."""

import json
import sys

import numpy as np
from safetensors import safe_open

from comet_jax import checkpoint
from comet_jax.config import CometConfig, ModelConfig
from comet_jax.export.tensors import expected_shapes
from test_convert_memory import peak_rss_anon_mb


def write_checkpoint(path, layers, hidden, inter, vocab):
    """A converted checkpoint (no memory) of random float32 parameters, written block by block."""
    model = ModelConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_layers=layers,
                        num_heads=hidden // 64, num_kv_heads=max(1, hidden // 256), head_dim=64, family="llama")
    comet = CometConfig()
    rng = np.random.default_rng(0)
    with checkpoint.atomic_dir(path) as tmp:
        writer = checkpoint.StreamingWriter(tmp)
        for leaf, shape in expected_shapes(model, comet).items():
            out = writer.leaf(leaf, shape, np.float32)
            for block in out.blocks():
                sub = list(shape)
                if block is not None:
                    sub[out.axis] = len(range(*block.indices(shape[out.axis])))
                out.write(block, rng.standard_normal(sub, dtype=np.float32))
        writer.finalize()
        checkpoint.write_meta(tmp, model, comet)
    return sum(int(np.prod(s)) * 4 for s in expected_shapes(model, comet).values())


def export_peak_mb(src, dst, shard_size):
    """Peak RssAnon of an export subprocess, sampled every 20 ms, and its summary."""
    peak, out = peak_rss_anon_mb([sys.executable, "-m", "comet_jax.export", str(src), str(dst), "--quiet",
                                  "--shard-size", shard_size])
    return peak, json.loads(out.strip().splitlines()[-1])


def test_peak_memory_is_a_few_blocks_not_a_shard(tmp_path):
    # 4 layers of hidden 1024 / intermediate 4096 (58 MB a layer) and two 32 MB vocabulary
    # leaves: 310 MB in float32, exported in shards of 150 MB
    model_bytes = write_checkpoint(tmp_path / "big", layers=4, hidden=1024, inter=4096, vocab=8192)
    write_checkpoint(tmp_path / "tiny", layers=1, hidden=128, inter=256, vocab=256)
    shard_mb = 150
    base, _ = export_peak_mb(tmp_path / "tiny", tmp_path / "tiny_hf", f"{shard_mb}MB")
    big, summary = export_peak_mb(tmp_path / "big", tmp_path / "big_hf", f"{shard_mb}MB")
    shards = sorted((tmp_path / "big_hf").glob("*.safetensors"))
    print(f"model {model_bytes / 1e6:.0f} MB exported in {len(shards)} shards of <= {shard_mb} MB; exporter peak "
          f"RssAnon {big:.0f} MB, {base:.0f} MB for a tiny model: growth {big - base:.0f} MB")
    assert summary["shards"] == len(shards) >= 3 and summary["total_size"] == model_bytes
    assert all(p.stat().st_size <= shard_mb * 10**6 + 10**5 for p in shards)
    assert big - base <= 4 * checkpoint.BLOCK_BYTES / 2**20 < shard_mb * 10**6 / 2**20
    # spot check: a stacked leaf's last layer, transposed back to torch's (out, in)
    w_down = np.asarray(checkpoint.load_params(tmp_path / "big")["layers"]["w_down"][3])
    index = json.loads((tmp_path / "big_hf" / "model.safetensors.index.json").read_text())["weight_map"]
    name = "model.layers.3.mlp.down_proj.weight"
    with safe_open(tmp_path / "big_hf" / index[name], framework="numpy") as f:
        np.testing.assert_array_equal(f.get_tensor(name), w_down.T)
