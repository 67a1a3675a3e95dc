"""Size a training run before renting it: compile the real train step for the target.

    comet-plan --config configs/llama3_8b_comet_32k.yaml --target v5e:4x4 mesh.fsdp=16 train.batch_size=16
    comet-plan --config configs/llama3_8b_comet_32k.yaml --target h100 --devices 8
    comet-plan --config X.yaml --devices 16          # no libtpu: CPU compiler, an estimate

`--target` is a TPU topology (v4, v5e, v5p, v6e: compiled by the TPU compiler for its chips,
needs libtpu from requirements-dev.txt) or a GPU preset (h100, h200: HBM and peak only; the
program is compiled for `--devices` fake CPU devices). The train step is compiled on the
config's mesh with abstract inputs (nothing allocated, no checkpoint needed). Prints a table
and, as the last stdout line, one JSON object: target, devices, mesh, params,
params_opt_bytes_per_device (parameters + Adam moments per device, from the shardings:
exact), temp_bytes_per_device and the other per-device bytes of `memory_analysis()`,
flops_per_step (model FLOPs, comet_jax/train/flops.py) next to the compiler's hlo_flops (it
counts a loop body once, so it is far lower for scanned layers), tokens_per_step, a step time at
`--mfu` of the chip's peak, compile_s and fits (total bytes against the chip's HBM; a
program the TPU compiler refuses is `fits: false`, with the figures of its message in
temp_bytes_per_device, and total_bytes_per_device where it gives one). host_temp_bytes_per_device
(and host_argument / output / alias) are pinned host memory beside the HBM: model.remat=offload
keeps the saved step inputs there. `--search-batch` finds the largest train.batch_size that fits
by doubling / halving. `--search` tries the layouts of the same recipe (mesh.fsdp / tensor /
stage, model.schedule, model.remat, optim.grad_accum; batch and seq_len kept), compiles at most
`--search-limit` of them, likely winners first, and prints those that fit, fastest first, as
`k=v` overrides to paste; the JSON line is then the best layout's plan plus `search: [{overrides,
fits, total_bytes_per_device, host_temp_bytes_per_device, step_s_est}, ...]`.

Figures from `--devices` (the CPU compiler) are estimates: its buffer assignment and fusion
differ from a TPU's or a GPU's. The fake devices are asked for before jax starts, so
`--devices N` works when this runs as a command (comet-plan, python -m comet_jax.compile.plan),
not in a process that has already imported jax with fewer devices.
"""

from __future__ import annotations

import json
import os
import sys

from comet_jax.compile.lower import base_vocab, build_functions, memory_levers
from comet_jax.compile.search import GB, size
from comet_jax.config import ConfigError
from comet_jax.train.train_config import config_parser
from comet_jax.train.train_config_checks import load_valid

GIB = 2**30  # HBM sizes are binary: the TPU compiler's "15.75G" of a v5e is 15.75 GiB (16.9e9 bytes)
# per chip: HBM (GiB, as the compiler counts it) and dense bf16 peak (TFLOP/s)
CHIPS = {"v4": (32.0, 275.0), "v5e": (15.75, 197.0), "v5p": (95.0, 459.0), "v6e": (31.25, 918.0),
         "h100": (80.0, 989.0), "h200": (141.0, 989.0)}


def parse_args(argv=None):
    ap = config_parser("comet-plan", __doc__)
    ap.add_argument("--target", help="TPU topology (v5e:4x4, v5p:4x4x4, v6e:2x2, v4:2x2x2) or GPU preset (h100, h200)")
    ap.add_argument("--devices", type=int, default=0, help="compile for N fake CPU devices (no libtpu needed)")
    ap.add_argument("--hbm-gb", type=float, default=0.0,
                    help="device memory in GiB, as the TPU compiler counts it (default: the target's)")
    ap.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation for the step-time estimate")
    ap.add_argument("--search-batch", action="store_true", help="find the largest train.batch_size that fits")
    ap.add_argument("--search", action="store_true",
                    help="try the mesh splits (fsdp/tensor/stage), model.schedule, model.remat and optim.grad_accum "
                         "of this batch and seq_len; print those that fit, fastest first, as overrides to paste")
    ap.add_argument("--search-limit", type=int, default=12,
                    help="compile at most this many layouts with --search (default 12; likely winners first)")
    args = ap.parse_intermixed_args(argv)
    if not args.target and not args.devices:
        ap.error("give --target (a TPU topology or h100/h200) and/or --devices N")
    if args.devices < 0 or not 0 < args.mfu <= 1:
        ap.error("--devices must be >= 1 and --mfu in (0, 1]")
    gen = (args.target or "").split(":")[0].lower()
    if args.target and gen not in CHIPS:
        ap.error(f"--target {args.target}: unknown chip {gen!r}; known: {', '.join(CHIPS)}")
    if gen in ("h100", "h200") and not args.devices:
        ap.error(f"--target {gen} is a GPU preset: give --devices N (the program is compiled for N CPU devices)")
    args.chip = gen or None
    if args.search and args.search_batch:
        ap.error("--search keeps train.batch_size; run --search-batch first, then --search at that batch")
    if args.search and not (args.hbm_gb or gen in CHIPS):
        ap.error("--search needs the device memory to tell what fits: give --target or --hbm-gb")
    if args.search_limit < 1:
        ap.error(f"--search-limit must be >= 1, got {args.search_limit}")
    return args


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded abstract arrays (the largest shard)."""
    import math

    import jax

    total = 0
    for x in jax.tree.leaves(tree):
        shard = x.sharding.shard_shape(x.shape)
        total += math.prod(shard) * x.dtype.itemsize
    return total


def plan_once(cfg, args, devices, compile_target: str):
    """Compile the train step of `cfg` on `devices`; returns the result dict."""
    import numpy as np

    from comet_jax import aot, build
    from comet_jax.model import attention
    from comet_jax.parallel import sharding
    from comet_jax.train.flops import param_count, train_flops_per_token

    model, comet, source = build.from_sections(cfg.model, cfg.comet, base_vocab(cfg))
    m = cfg.mesh
    shape = (m.data, m.fsdp, m.tensor, m.stage)
    if m.data * m.fsdp * m.tensor * m.stage != len(devices):
        raise ConfigError(f"mesh data*fsdp*tensor*stage = {m.data * m.fsdp * m.tensor * m.stage} but the target has "
                          f"{len(devices)} devices; set e.g. mesh.fsdp={len(devices) // (m.data * m.tensor * m.stage)}")
    mesh = sharding.make_mesh(*shape, devices=np.asarray(devices[: int(np.prod(shape))]))
    platform = "tpu" if compile_target == "tpu" else "cpu"
    with attention.target(platform), sharding.tracing(mesh, cfg.mesh.rules):
        [(_, fn, fargs, _)] = build_functions(cfg, model, comet, mesh, {"train"}, 0, 8)
        result = aot.compile_fn(fn, fargs)
    state = fargs[0]
    mode = cfg.comet.mode
    tokens = cfg.train.batch_size * cfg.data.seq_len
    flops = train_flops_per_token(model, comet if mode == "comet" else None, context=cfg.data.seq_len) * tokens
    hbm, peak = CHIPS.get(args.chip, (0.0, 0.0))
    hbm = args.hbm_gb or hbm
    out = {"target": args.target or f"{len(devices)} CPU devices", "compiler": compile_target,
           "devices": int(np.prod(shape)), "mesh": dict(mesh.shape), "model_from": source,
           "batch_size": cfg.train.batch_size, "seq_len": cfg.data.seq_len, "mode": mode,
           "remat": cfg.model.remat, "schedule": cfg.model.schedule,
           "params": param_count(model, comet),
           "params_opt_bytes_per_device": per_device_bytes({"p": state["params"], "o": state["opt_state"]}),
           "tokens_per_step": tokens, "flops_per_step": flops, "compile_s": result.get("compile_s")}
    mem = result.get("memory") or {}
    out.update({f"{k}_per_device": v for k, v in mem.items()})  # a refusal: the figures of its message
    if result["compiled"]:
        out["hlo_flops"] = result.get("hlo_flops")
        out["fits"] = mem.get("total_bytes", 0) <= hbm * GIB if hbm else None
    else:
        out.update({"fits": False, "error": result["error"]})
    if peak:
        out["step_s_at_mfu"] = float(f"{flops / (out['devices'] * peak * 1e12 * args.mfu):.4g}")
        out["mfu"] = args.mfu
    out["hbm_gb_per_device"] = hbm or None
    return out


def table(r: dict) -> str:
    if "target" not in r:  # a --search layout whose compile failed before it could be measured
        return f"compiler  {r.get('error')}"
    gb = lambda k: size(r.get(k))  # noqa: E731
    refused = " (from the compiler's refusal; its G is GiB)" if r.get("error") and r.get("hlo_flops") is None else ""
    rows = [("target", f"{r['target']} ({r['devices']} devices, compiled by the {r['compiler']} compiler)"),
            ("mesh", " ".join(f"{k}={v}" for k, v in r["mesh"].items())),
            ("model", f"{r['params'] / 1e9:.3f}B parameters ({r['model_from']}), {r['mode']}, remat {r['remat']}"),
            ("batch", f"{r['batch_size']} x {r['seq_len']} tokens = {r['tokens_per_step']} per step"),
            ("params + optimizer", gb("params_opt_bytes_per_device") + " per device"),
            ("arguments / temp", f"{gb('argument_bytes_per_device')} / {gb('temp_bytes_per_device')} per device"
                                 + refused),
            ("total", f"{gb('total_bytes_per_device')} of {r['hbm_gb_per_device'] or '?'} GiB HBM "
                      f"({(r['hbm_gb_per_device'] or 0) * GIB / GB:.2f} GB)"),
            ("host (pinned)", f"{gb('host_temp_bytes_per_device')} temp, {gb('host_argument_bytes_per_device')} "
                              "arguments per device, beside the HBM"),
            ("FLOPs per step", f"{r['flops_per_step']:.3e} (compiler, loop bodies once: {r.get('hlo_flops') or 0:.3e})"),
            ("step time", f"{r['step_s_at_mfu']} s at {r['mfu']:.0%} MFU" if "step_s_at_mfu" in r else "-"),
            ("compile", f"{r['compile_s']} s"),
            ("fits", {True: "yes", False: "NO", None: "unknown (no HBM figure: --hbm-gb)"}[r["fits"]])]
    if r.get("error"):
        rows.append(("compiler", r["error"]))
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def levers(cfg) -> str:
    """Advice without --search: the search itself, and only levers that cannot need more memory."""
    return "to fit, try: --search (layouts of this batch, compiled); " + "; ".join(memory_levers(cfg))


def search_batch(cfg, args, devices, compiler, first: dict, log) -> tuple[dict, int | None]:
    """Double the batch while it fits, or halve it until it does (multiples of data x fsdp)."""
    import dataclasses

    dp = cfg.mesh.data * cfg.mesh.fsdp * cfg.optim.grad_accum
    best, batch, last = (first, cfg.train.batch_size) if first["fits"] else (None, None), cfg.train.batch_size, first
    step = 2 if first["fits"] else 0.5
    for _ in range(8):
        nxt = int(batch * step)
        if nxt < dp or nxt % dp:
            break
        batch = nxt
        c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=batch))
        last = plan_once(c, args, devices, compiler)
        log(f"batch {batch}: {'fits' if last['fits'] else 'does not fit'}"
            + (f" ({last.get('total_bytes_per_device', 0) / GB:.2f} GB)" if last.get("total_bytes_per_device") else ""))
        if last["fits"]:
            best = (last, batch)
            if step < 1:
                break
        elif step > 1:
            break
    if best[0] is not None and best[1] == batch and step > 1:
        best[0]["search_stopped_at"] = batch  # still fitting after 8 doublings: a lower bound
    return best if best[0] is not None else (last, None)


def run_search(cfg, args, devices, compiler, log) -> dict:
    """--search: the best layout's plan (or, when none fits, the closest) with the search's rows."""
    from comet_jax import build
    from comet_jax.chunking import PlannerMix
    from comet_jax.compile import search
    from comet_jax.data.pipeline import num_chunks_for
    from comet_jax.train.flops import param_count, real_slots_per_chunk
    from comet_jax.train.train_config import load_config
    from comet_jax.train.train_config_checks import validate

    model, comet, _ = build.from_sections(cfg.model, cfg.comet, base_vocab(cfg))
    chunked = cfg.comet.mode == "comet"
    chunks = num_chunks_for(cfg.data.seq_len, comet, PlannerMix(weights=dict(cfg.comet.planners),
                                                                min_size=cfg.comet.min_chunk)) if chunked else 1
    slots = real_slots_per_chunk(comet) / comet.chunk_size if chunked else 1.0

    def make_cfg(overrides):
        c = load_config(args.config, [*args.overrides, *overrides])
        validate(c)
        return c

    hbm = args.hbm_gb or CHIPS[args.chip][0]
    found = search.search(cfg, make_cfg, lambda c: plan_once(c, args, devices, compiler), model,
                          param_count(model, comet), slots, len(devices), chunks, hbm * GIB, args.search_limit, log)
    if not found["tried"]:
        raise ConfigError(f"--search: no layout of {len(devices)} devices passes the config's checks "
                          f"(train.batch_size {cfg.train.batch_size} over mesh.data {cfg.mesh.data})")
    # every layout runs the same FLOPs on the same devices: its estimate is the plain one x its cost
    plain = next((r["step_s_at_mfu"] for _, r in found["tried"] if r.get("step_s_at_mfu")), None)
    rows = search.ranked(found["tried"], dict(cfg.mesh.rules),
                         lambda c: float(f"{plain * c.cost:.4g}") if plain else None)
    by_text = {c.text(dict(cfg.mesh.rules)): r for c, r in found["tried"]}
    top = rows[0]
    out = dict(by_text[top["overrides"]])
    out.update({"overrides": top["overrides"], "step_s_est": top["step_s_est"], "search": rows,
                "search_compiled": len(found["tried"]), "search_skipped": found["skipped"],
                "search_untried": found["untried"], "search_candidates": found["total"]})
    return out


def search_report(r: dict) -> str:
    """The search's rows for the terminal: what fits, fastest first; else the closest."""
    fit = [x for x in r["search"] if x["fits"]]
    head = (f"searched {r['search_compiled']} of {r['search_candidates']} layouts "
            f"({r['search_skipped']} answered by a compiled neighbour, {r['search_untried']} not tried)")
    if not fit:
        x = r["search"][0]
        need = x.get("total_bytes_per_device") or x.get("temp_bytes_per_device")
        return (f"{head}\nnone fits in {r['hbm_gb_per_device']} GiB; the closest: {x['overrides']}"
                + (f" needs {size(need)}" + ("" if x.get("total_bytes_per_device") else " of temporaries")
                   if need else "")
                + "\nto fit, try: a smaller train.batch_size; more chips"
                + (f"; --search-limit {r['search_compiled'] + r['search_untried']} (try every layout)"
                   if r["search_untried"] else ""))
    lines = [head, "layouts that fit, fastest first (step time estimated: model FLOPs x recompute x pipeline "
                   "bubble; paste the overrides after the command):"]
    for i, x in enumerate(fit, 1):
        step = f"{x['step_s_est']} s" if x["step_s_est"] else "-"
        host = f" + {size(x['host_temp_bytes_per_device'])} host" if x.get("host_temp_bytes_per_device") else ""
        lines.append(f"  {i}. {step:>10}  {size(x['total_bytes_per_device'])}{host}  {x['overrides']}")
    return "\n".join(lines)


def device_environment(devices: int) -> None:
    """The CPU platform and `devices` fake CPU devices, asked for before jax starts (a process
    that already imported jax keeps what it has)."""
    if "jax" in sys.modules:
        return
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if devices:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={devices}").strip()


def main(argv=None) -> int:
    args = parse_args(argv)
    device_environment(args.devices)
    import jax

    from comet_jax import aot

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    try:
        cfg = load_valid(args)
        if args.chip in CHIPS and args.chip not in ("h100", "h200") and not args.devices:
            devices, compiler = aot.tpu_devices(args.target), "tpu"
        else:
            devices, compiler = jax.devices("cpu"), "cpu"
            if args.devices > len(devices):
                raise ConfigError(f"--devices {args.devices}: this process has {len(devices)} CPU devices (run it as "
                                  "`comet-plan`, which asks for them before jax starts)")
            devices = devices[: args.devices]
        log(f"compiling the train step for {args.target or ''} {len(devices)} devices ({compiler} compiler)...")
        if args.search:
            result = run_search(cfg, args, devices, compiler, log)
            print(table(result))
            print(search_report(result))
            print(json.dumps(result), flush=True)
            return 0
        result = plan_once(cfg, args, devices, compiler)
        if args.search_batch:
            result, best = search_batch(cfg, args, devices, compiler, result, log)
            result["largest_batch_that_fits"] = best
    except (ConfigError, aot.Unavailable) as e:
        log(f"error: {e}")
        return 2
    print(table(result))
    if result["fits"] is False:
        print(levers(cfg))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
