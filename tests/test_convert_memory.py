"""The converter streams: its anonymous memory grows by a block of a leaf, not by the model.

Peaks are sampled from RssAnon in /proc (VmHWM and ru_maxrss also count the pages of the
memory-mapped shards, which are page cache, not the converter's memory)."""

import json
import subprocess
import sys
import threading
import time

import numpy as np
from safetensors.numpy import save_file

from comet_jax import checkpoint


def write_llama(path, layers, hidden, inter, vocab=512, shard_bytes=40 << 20, **config):
    """A random Llama directory of several safetensors shards, written without torch.
    Returns (number of shards, model bytes, largest shard bytes)."""
    path.mkdir()
    rng = np.random.default_rng(0)
    heads, kv, hd = max(1, hidden // 64), max(1, hidden // 128), 64
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
    names, sizes, total = [], [], 0
    current, size, weight_map = {}, 0, {}

    def flush():
        fname = f"model-{len(names) + 1:05d}.safetensors"
        save_file(current, path / fname)
        weight_map.update({name: fname for name in current})
        names.append(fname)
        sizes.append(size)

    for name, shape in shapes.items():
        current[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
        size += current[name].nbytes
        total += current[name].nbytes
        if size >= shard_bytes:
            flush()
            current, size = {}, 0
    if current:
        flush()
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv, "head_dim": hd, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
        "dtype": "float32", **config}))
    return len(names), total, max(sizes)


def rss_anon_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def peak_rss_anon_mb(cmd: list[str]) -> tuple[float, str]:
    """Run `cmd` (it must succeed): (its peak RssAnon in MB, sampled every 20 ms; its stdout)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, rss_anon_mb(proc.pid))
        time.sleep(0.02)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    return peak, out


def converter_peak_mb(src, dst):
    """Peak RssAnon of a converter subprocess."""
    return peak_rss_anon_mb([sys.executable, "-m", "comet_jax.convert", str(src), str(dst), "--quiet",
                             "--global-size", "4", "--stride", "8", "--budget", "16"])[0]


def test_peak_memory_is_a_block_not_the_model(tmp_path):
    # w_gate, w_up, w_down are the largest stacked leaves: 8 layers x 4096 x 1024 float32 = 128 MB
    n_shards, model_bytes, shard_bytes = write_llama(tmp_path / "big", layers=8, hidden=1024, inter=4096,
                                                     vocab=8192, shard_bytes=100 << 20)
    write_llama(tmp_path / "tiny", layers=1, hidden=128, inter=256)
    largest_leaf_mb = 8 * 4096 * 1024 * 4 / 2**20
    assert n_shards >= 5 and model_bytes / 2**20 >= 4 * largest_leaf_mb
    base = converter_peak_mb(tmp_path / "tiny", tmp_path / "tiny_out")
    big = converter_peak_mb(tmp_path / "big", tmp_path / "big_out")
    print(f"model {model_bytes / 2**20:.0f} MB in {n_shards} shards of <= {shard_bytes / 2**20:.0f} MB; largest "
          f"stacked leaf {largest_leaf_mb:.0f} MB; converter peak RssAnon {big:.0f} MB, {base:.0f} MB for a tiny "
          f"model: growth {big - base:.0f} MB")
    assert big - base <= 2 * largest_leaf_mb


def test_a_leaf_larger_than_memory_is_written_a_layer_at_a_time(tmp_path):
    """A stacked leaf is written in blocks of at least one layer: memory grows by about one
    layer (what a 70B model needs: its w_gate is 30 GB, one layer 0.47 GB), not the leaf."""
    layers, shape = 6, (2048, 8192)  # 64 MB a layer, 384 MB the leaf
    layer_mb, leaf_mb = 2048 * 8192 * 4 / 2**20, layers * 2048 * 8192 * 4 / 2**20
    writer = checkpoint.StreamingWriter(tmp_path)
    leaf = writer.leaf("layers.w_gate", (layers, *shape), np.float32)
    assert [(b.start, b.stop) for b in leaf.blocks()] == [(i, i + 1) for i in range(layers)]
    before, peak, stop = rss_anon_mb("self"), [0.0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_anon_mb("self"))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for block in leaf.blocks():
            value = np.full((1, *shape), block.start, np.float32)
            value[0, 0, :] = np.arange(shape[1])  # not all one value: a real block to encode
            leaf.write(block, value)
            del value
    finally:
        stop.set()
        sampler.join()
    writer.finalize()
    growth = peak[0] - before
    print(f"leaf {leaf_mb:.0f} MB in layers of {layer_mb:.0f} MB: RssAnon grew {growth:.0f} MB")
    assert growth <= 2.5 * layer_mb < leaf_mb
    back = checkpoint.load_params(tmp_path)["layers"]["w_gate"]
    assert back.shape == (layers, *shape) and back[4, 5, 6] == 4 and back[3, 0, 7] == 7
