"""The child side of eval/bench_long.py: what one measurement runs in its own process.

`python -m eval.bench_long --child SPEC` calls child_main(SPEC): SPEC is a JSON dict (mode,
length, preset or checkpoint, dtype, batch, decode_tokens, overrides); the result dict is
printed on one stdout line after RESULT_TAG, for the parent to read. Holds the presets, the
model set-up (build_configs, also used by the parent to check the arguments once), the
process memory probes and the measurement itself (run_child: warm-up, prefill, decode, peak
memory; see eval/bench_long.py's docstring for what is timed and how).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

from comet_jax.evals.common import format_length
from comet_jax.resources import device_peak_mb, mem_available_bytes, peak_rss_bytes, rss_bytes

RESULT_TAG = "@@BENCH_LONG_RESULT "

# preset: model shape, comet recipe, dtype, Generator blocking
PRESETS = {
    "tiny": {
        "model": dict(hidden_size=128, intermediate_size=256, num_layers=4, num_heads=4, num_kv_heads=2,
                      head_dim=32),
        "vocab": 256, "comet": dict(chunk_size=64, global_size=8, stride=8, budget=16),
        "dtype": "float32", "block_chunks": 8, "full_block": 256,
    },
    "gpu-0.5b": {
        "model": dict(hidden_size=1024, intermediate_size=4864, num_layers=24, num_heads=16, num_kv_heads=8,
                      head_dim=64),
        "vocab": 32000, "comet": dict(chunk_size=2048, global_size=512, stride=8, budget=2048),
        "dtype": "bfloat16", "block_chunks": 4, "full_block": 1024,
    },
}


def random_params(model, comet) -> dict:
    """Parameters with init_params' shapes and scales (N(0, initializer_range), norms 1),
    drawn with numpy: eager jax.random init compiles every op, seconds per child process."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from comet_jax.model.init import init_params

    shapes = jax.eval_shape(lambda: init_params(model, comet, jax.random.key(0)))
    rng = np.random.default_rng(0)

    def fill(path, s):
        if "norm" in jax.tree_util.keystr(path):
            return jnp.ones(s.shape, s.dtype)
        x = rng.standard_normal(s.shape, np.float32)
        x *= model.initializer_range
        return jnp.asarray(x, s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def build_configs(spec: dict):
    """(ModelConfig, CometConfig, source) for a preset or a checkpoint, overrides applied and
    validated; raises ConfigError (a ValueError) or CheckpointError with a message."""
    from comet_jax import build

    ov = {k: spec["overrides"][k] for k in ("chunk_size", "global_size", "stride", "budget")
          if spec["overrides"].get(k) is not None}
    attention = spec.get("attention") or "auto"
    if spec["checkpoint"]:
        model, comet, _ = build.from_checkpoint(spec["checkpoint"], dtype=spec["dtype"], attention=attention, **ov)
        return model, comet, f"checkpoint {spec['checkpoint']}"
    p = PRESETS[spec["preset"]]
    dtype = spec["dtype"] or p["dtype"]
    model, comet = build.scratch(p["vocab"], **{**p["comet"], **ov}, dtype=dtype, param_dtype=dtype,
                                 attention=attention, **p["model"])
    return model, comet, f"preset {spec['preset']} (random weights)"


def build_model(spec: dict):
    """(params, ModelConfig, CometConfig, info dict) for a preset or a checkpoint."""
    import jax

    model, comet, source = build_configs(spec)
    if spec["checkpoint"]:
        from comet_jax import checkpoint
        params = checkpoint.load_params(spec["checkpoint"])
    else:
        params = random_params(model, comet)
    n_params = sum(int(x.size) for x in jax.tree.leaves(params))
    from comet_jax.model.attention import resolve

    info = {"source": source, "n_params": n_params, "dtype": model.dtype,
            "attention": resolve(model.attention, model.dtype),
            "model": dataclasses.asdict(model), "comet": {**dataclasses.asdict(comet)}}
    info["comet"].pop("global_beacon_ids")
    return params, model, comet, info


def text_vocab(model, comet) -> int:
    """Ids below this are ordinary text tokens (not CoMeT placeholders/beacons)."""
    ids = [i for i in (comet.placeholder_id, comet.temp_beacon_id, *comet.global_beacon_ids) if i >= 0]
    return min(ids) if ids else model.real_vocab


def run_child(spec: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from comet_jax.infer.generate import Generator, decode_loop, full_cache_size

    mode, length, batch, new = spec["mode"], spec["length"], spec["batch"], spec["decode_tokens"]
    params, model, comet, info = build_model(spec)
    preset = PRESETS.get(spec["preset"], PRESETS["tiny"])
    block_chunks = spec["overrides"].get("block_chunks") or preset["block_chunks"]
    full_block = spec["overrides"].get("full_block") or preset["full_block"]
    gen = Generator(params, model, comet, mode=mode, block_chunks=block_chunks, full_block=full_block)
    dev = jax.devices()[0]
    say = lambda msg: print(f"  [{mode} {format_length(length)}] {msg}", file=sys.stderr, flush=True)  # noqa: E731

    cache_len = None
    if mode == "full":
        cache_len = full_cache_size(length, new, full_block)
        kv_bytes = (2 * model.num_layers * batch * cache_len * model.num_kv_heads * model.head_dim
                    * jnp.dtype(model.dtype).itemsize)
        avail = mem_available_bytes() if dev.platform == "cpu" else None
        if avail is not None and kv_bytes > 0.8 * avail:
            raise MemoryError(f"the full KV cache ({kv_bytes / 2**30:.1f} GiB for {cache_len} slots) would not fit "
                              f"in the {avail / 2**30:.1f} GiB of free memory")

    def decode(state, logits, b):
        out = decode_loop(gen.params, state, logits, jnp.ones((b,), bool), jax.random.key(0), jnp.float32(0.0),
                          jnp.float32(1.0), jnp.asarray([-1], jnp.int32), None, model=model, comet=comet, mode=mode,
                          official=False, max_new=new, record=False)
        return jax.block_until_ready(out)

    # Warm-up: compile every function the measurement runs, at the measured shapes.
    rng = np.random.default_rng(1)
    vocab = text_vocab(model, comet)
    t0 = time.perf_counter()
    if mode == "comet":
        c = comet.chunk_size
        warm = [rng.integers(0, vocab, (block_chunks + 1) * c + c // 2, dtype=np.int32) for _ in range(batch)]
        state, logits = gen.prefill(warm, extra=new)
    else:  # one-token prompts with room for the whole measured prompt: the same cache shape
        warm = [rng.integers(0, vocab, 1, dtype=np.int32) for _ in range(batch)]
        state, logits = gen.prefill(warm, extra=length + new - 1)
    jax.block_until_ready((state, logits))
    decode(state, logits, batch)
    compile_s = time.perf_counter() - t0
    del state, logits
    rss_warm = rss_bytes()
    say(f"warm-up/compile {compile_s:.1f}s, RSS {rss_warm / 2**20:.0f} MB")

    prompts = [np.random.default_rng(2 + r).integers(0, vocab, length, dtype=np.int32) for r in range(batch)]
    total = length * batch
    marks = {"next": 0.1, "done": 0, "t0": time.perf_counter()}

    def progress(n):
        marks["done"] += n
        if total >= 256 * 1024 and marks["done"] >= marks["next"] * total:
            dt = time.perf_counter() - marks["t0"]
            say(f"prefill dispatched {min(marks['done'], total) / total:4.0%} after {dt:.1f}s")
            marks["next"] += 0.1

    times = []
    while True:  # short prefills are repeated (median of up to 5, ~2 s in all): less noise
        t0 = time.perf_counter()
        state, logits = gen.prefill(prompts, extra=new, progress=progress if not times else None)
        jax.block_until_ready((state, logits))
        times.append(time.perf_counter() - t0)
        if sum(times) >= 2.0 or len(times) >= 5:
            break
        del state, logits
    prefill_s = float(np.median(times))
    state_bytes = sum(int(x.nbytes) for x in jax.tree.leaves(state))
    say(f"prefill {prefill_s:.2f}s ({total / prefill_s:,.0f} tokens/s)")

    t0 = time.perf_counter()
    tokens, lengths, _, _ = decode(state, logits, batch)
    decode_s = time.perf_counter() - t0
    steps = int(np.asarray(lengths).max())
    res = {
        "mode": mode, "length": length, "status": "ok", "batch": batch,
        "prefill_s": prefill_s, "prefill_runs_s": times, "tokens_per_s": total / prefill_s, "compile_s": compile_s,
        "decode_tokens": steps, "decode_ms_per_token": 1e3 * decode_s / steps,
        "peak_rss_mb": peak_rss_bytes() / 2**20, "rss_after_warmup_mb": rss_warm / 2**20,
        "rss_growth_mb": (peak_rss_bytes() - rss_warm) / 2**20,
        "state_mb": state_bytes / 2**20, "cache_len": cache_len,
        "block_chunks": block_chunks if mode == "comet" else None,
        "full_block": full_block if mode == "full" else None,
        "device": dev.device_kind, "platform": dev.platform, "info": info,
    }
    peak = device_peak_mb(dev)
    if peak is not None:
        res["peak_device_mb"] = peak
    say(f"decode {res['decode_ms_per_token']:.2f} ms/token, peak RSS {res['peak_rss_mb']:.0f} MB")
    return res


def child_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    try:
        res = run_child(spec)
    except MemoryError as e:
        res = {"mode": spec["mode"], "length": spec["length"], "status": "failed", "reason": f"out of memory: {e}"}
    except Exception as e:  # noqa: BLE001  (reported to the parent, which decides)
        msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        oom = "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower()
        res = {"mode": spec["mode"], "length": spec["length"], "status": "failed",
               "reason": ("out of memory: " if oom else f"{type(e).__name__}: ") + msg}
    print(RESULT_TAG + json.dumps(res), flush=True)
    return 0
