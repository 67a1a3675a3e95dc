"""The converter streams: peak host memory grows by about one stacked leaf, not the model."""

import json
import subprocess
import sys

import numpy as np
from safetensors.numpy import save_file


def write_llama(path, layers, hidden, inter, vocab=512, shard_bytes=40 << 20):
    """A random Llama directory of several safetensors shards, written without torch."""
    path.mkdir()
    rng = np.random.default_rng(0)
    heads, kv, hd = hidden // 64, max(1, hidden // 128), 64
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
              "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
                       p + "self_attn.q_proj.weight": (heads * hd, hidden),
                       p + "self_attn.k_proj.weight": (kv * hd, hidden),
                       p + "self_attn.v_proj.weight": (kv * hd, hidden),
                       p + "self_attn.o_proj.weight": (hidden, heads * hd),
                       p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                       p + "mlp.down_proj.weight": (hidden, inter)})
    shards, current, size, weight_map = [], {}, 0, {}
    for name, shape in shapes.items():
        current[name] = (rng.standard_normal(shape, dtype=np.float32) * 0.02)
        size += current[name].nbytes
        if size >= shard_bytes:
            shards.append(current)
            current, size = {}, 0
    if current:
        shards.append(current)
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, path / fname)
        weight_map.update({name: fname for name in shard})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv, "head_dim": hd, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
        "dtype": "float32"}))
    total = sum(a.nbytes for s in shards for a in s.values())
    return len(shards), total, max(sum(a.nbytes for a in s.values()) for s in shards)


def peak_mb(src, dst):
    proc = subprocess.run([sys.executable, "-m", "comet_jax.convert", str(src), str(dst), "--quiet",
                           "--global-size", "4", "--stride", "8", "--budget", "16"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def test_peak_memory_is_about_one_shard(tmp_path):
    write_llama(tmp_path / "tiny", layers=1, hidden=128, inter=256)
    n_shards, model_bytes, shard_bytes = write_llama(tmp_path / "big", layers=16, hidden=512, inter=2048)
    assert n_shards >= 5
    base = peak_mb(tmp_path / "tiny", tmp_path / "tiny_out")
    big = peak_mb(tmp_path / "big", tmp_path / "big_out")
    growth = big - base
    largest_leaf_mb = 16 * 2048 * 512 * 4 / 2**20
    print(f"model {model_bytes / 2**20:.0f} MB in {n_shards} shards of <= {shard_bytes / 2**20:.0f} MB; "
          f"largest stacked leaf {largest_leaf_mb:.0f} MB; converter peak RSS {big:.0f} MB, "
          f"{base:.0f} MB for a tiny model: growth {growth:.0f} MB")
    assert growth < 0.6 * model_bytes / 2**20
    assert growth < 2.5 * largest_leaf_mb
