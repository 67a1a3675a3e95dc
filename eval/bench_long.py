"""python -m eval.bench_long [--lengths 8k,32k,64k,128k,512k,1M] [--modes comet,full] [--preset tiny]

Long-context generation benchmark: prefill time, peak process memory and decode
ms/token of CoMeT mode (constant state: memories plus one open chunk) against full mode
(a KV cache over the whole prompt) at growing prompt lengths.

Each (mode, length) runs in a fresh child process (this module with a hidden --child flag),
so peak memory is per measurement. A child builds the model, warms up (compiles) on a
short prompt, then times, all with jax.block_until_ready:
  prefill   Generator.prefill on `batch` random prompts of the length (compile excluded;
            the warm-up wall time is reported as compile_s). In full mode the warm-up is a
            1-token prompt with the same cache size, so the long shapes are compiled too.
  decode    the jitted decode loop (comet_jax.infer.generate.decode_loop, exactly what
            Generator.generate runs after its prefill), greedy, --decode-tokens steps from the
            prefilled state, timed separately: decode_ms_per_token = loop time / steps.
  memory    peak RSS of the child (VmHWM of /proc/self/status, ru_maxrss as a fallback),
            which includes the JAX runtime and the compiled code (+MB: the peak minus the RSS
            after warm-up, what the measurement itself added); on a GPU also the device's
            peak_bytes_in_use. state_mb is the size of the decode state after prefill.
Short prefills are repeated (median of up to 5 runs, ~2 s in all) to damp noise.

Full mode stops at the first length whose child fails (out of memory, crash, timeout), or
whose predicted prefill time (quadratic extrapolation from the previous length) exceeds
--full-limit-s, or whose predicted peak memory (linear in the cache) exceeds the free
memory; the rest are recorded as skipped with the reason.

Targets: comet prefill time linear in length (time per token at the longest
vs the shortest length <= 1.25, the slack is for a noisy shared machine; the log-log slope
is printed too), comet peak memory at the longest length (1M) <= 1.1x at 32k (on a GPU:
device peak bytes), comet >= 5x faster than full prefill at 64k (when full was skipped
there: a lower bound, the longest measured full run scaled linearly in length, since full
prefill time per token never falls with length; the quadratic estimate is printed too).
Writes results.json and bench_long.png (log-log prefill time and peak memory vs length)
to --out, each written to a temporary file and renamed; results.json also after every
measurement ("complete": false until the end), so a run cut short keeps what it measured.
--out is checked before the first measurement.

Lengths accept k and M suffixes: k = 1024 tokens, M = 1024*1024 tokens (8k = 8192, 1M = 1048576).
Presets: tiny = configs/tiny_cpu.yaml's model (hidden 128, 4 layers, C 64, G 8, stride 8,
budget 16, float32); gpu-0.5b = a random Llama-style model of ~0.50B parameters (hidden
1024, 24 layers, 16 heads, 8 kv heads, intermediate 4864, vocab 32000), bfloat16, with
the official recipe (docs/design.md §1.4): C 2048, G 512, stride 8, budget 2048 and block_chunks 4.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from comet_jax.config import ATTENTION_HELP, ATTENTIONS, MODES

# the child side (what runs in each measurement process)
from eval.bench_long_child import PRESETS, RESULT_TAG, build_configs, child_main
from comet_jax.evals.common import atomic_write, check_out_dir, format_length, parse_length, save_png
from comet_jax.resources import mem_available_bytes

REPO = Path(__file__).resolve().parent.parent
DEFAULT_LENGTHS = "8k,32k,64k,128k,512k,1M"

# target thresholds
LINEAR_MAX = 1.25   # comet time per token, longest / shortest length
MEMORY_MAX = 1.1    # comet peak memory, longest / 32k
SPEEDUP_MIN = 5.0   # full / comet prefill time at 64k


# ----------------------------------------------------------------------------- arguments

def parse_lengths(text: str) -> list[int]:
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("--lengths is empty")
    try:
        return sorted({parse_length(p) for p in parts})
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"bad --modes {text!r}: a comma list of {', '.join(MODES)}")
    return [m for m in MODES if m in modes]


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def positive_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {x}")
    return x


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m eval.bench_long", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=parse_lengths, default=parse_lengths(DEFAULT_LENGTHS),
                    help=f"prompt lengths, comma-separated, k = 1024 and M = 1024*1024 tokens "
                         f"(default {DEFAULT_LENGTHS})")
    ap.add_argument("--modes", type=parse_modes, default=list(MODES), help="comet,full (default both)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--checkpoint", default=None, help="a checkpoint dir (comet_jax.checkpoint) instead of a preset")
    ap.add_argument("--batch", type=positive_int, default=1, help="prompts per prefill (default 1)")
    ap.add_argument("--decode-tokens", type=positive_int, default=32, help="decode steps timed (default 32)")
    ap.add_argument("--full-limit-s", type=positive_float, default=300.0,
                    help="skip full mode from the length whose predicted prefill time exceeds this (default 300)")
    ap.add_argument("--child-timeout-s", type=positive_float, default=3600.0,
                    help="kill a measurement after this many seconds (default 3600)")
    ap.add_argument("--out", default="runs/bench_long", help="output dir (default runs/bench_long)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                    help="compute dtype (default: the preset's or the checkpoint's)")
    ap.add_argument("--chunk-size", type=positive_int, default=None, help="override the comet chunk size")
    ap.add_argument("--global-size", type=int, default=None, help="override G (presets; must match a checkpoint's)")
    ap.add_argument("--stride", type=int, default=None, help="override the temp-beacon stride (-1: none)")
    ap.add_argument("--budget", type=int, default=None, help="override the temp-memory budget")
    ap.add_argument("--block-chunks", type=positive_int, default=None, help="closed chunks per prefill call")
    ap.add_argument("--full-block", type=positive_int, default=None, help="tokens per full-mode prefill call")
    ap.add_argument("--attention", choices=ATTENTIONS, default="auto", help=ATTENTION_HELP)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return ap


# ----------------------------------------------------------------------------- parent

def spawn(spec: dict, timeout_s: float) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    cmd = [sys.executable, "-m", "eval.bench_long", "--child", json.dumps(spec)]
    base = {"mode": spec["mode"], "length": spec["length"], "status": "failed"}
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=env, cwd=str(REPO),
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {**base, "reason": f"timed out after {timeout_s:.0f}s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    if proc.returncode < 0:
        sig = -proc.returncode
        why = " (SIGKILL: likely out of memory)" if sig == 9 else ""
        return {**base, "reason": f"child killed by signal {sig}{why}"}
    tail = " | ".join(proc.stdout.strip().splitlines()[-3:])
    return {**base, "reason": f"child exited with code {proc.returncode} without a result {tail}".strip()}


def full_skip_reason(length: int, prev: dict | None, limit_s: float) -> str | None:
    """Why full mode should not run this length, predicted from the previous measurement."""
    if prev is None:
        return None
    scale = length / prev["length"]
    t = prev["prefill_s"] * scale ** 2
    if t > limit_s:
        return f"predicted prefill {t:.0f}s > --full-limit-s {limit_s:.0f} (quadratic from {format_length(prev['length'])})"
    avail = mem_available_bytes()
    if avail is not None and prev.get("platform") == "cpu":
        grow = max(prev["peak_rss_mb"] - prev.get("rss_after_warmup_mb", 0), 0) * 2**20
        mem = prev.get("rss_after_warmup_mb", 0) * 2**20 + grow * scale
        if mem > 0.8 * avail:
            return (f"predicted peak memory {mem / 2**30:.1f} GiB > 80% of the {avail / 2**30:.1f} GiB free "
                    f"(linear from {format_length(prev['length'])})")
    return None


# ----------------------------------------------------------------------------- report

def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loglog_slope(xs, ys) -> float | None:
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den if den else None


def targets(rows: list[dict]) -> dict:
    ok = {(r["mode"], r["length"]): r for r in rows if r["status"] == "ok"}
    comet = sorted((r for r in ok.values() if r["mode"] == "comet"), key=lambda r: r["length"])
    out = {}

    def verdict(value, ok_):
        return "n/a" if value is None else ("PASS" if ok_ else "FAIL")

    # linearity
    t = {"target": f"comet prefill time per token, longest / shortest length <= {LINEAR_MAX}"}
    if len(comet) >= 2:
        lo, hi = comet[0], comet[-1]
        ratio = (hi["prefill_s"] / hi["length"]) / (lo["prefill_s"] / lo["length"])
        t.update(value=ratio, lengths=[lo["length"], hi["length"]],
                 loglog_slope=loglog_slope([r["length"] for r in comet], [r["prefill_s"] for r in comet]),
                 verdict=verdict(ratio, ratio <= LINEAR_MAX))
    else:
        t.update(value=None, verdict="n/a", why="needs two comet lengths")
    out["comet_linear_time"] = t
    # memory
    t = {"target": f"comet peak memory, longest length (1M) / 32k <= {MEMORY_MAX}"}
    base, hi = ok.get(("comet", 32 * 1024)), comet[-1] if comet else None
    if base and hi and hi["length"] > base["length"]:
        ratio = hi["peak_rss_mb"] / base["peak_rss_mb"]
        if "peak_device_mb" in hi and "peak_device_mb" in base:  # on an accelerator, its memory decides
            t["rss_value"] = ratio
            ratio = hi["peak_device_mb"] / base["peak_device_mb"]
            t["target"] += " (device peak_bytes_in_use)"
        t.update(value=ratio, lengths=[base["length"], hi["length"]], verdict=verdict(ratio, ratio <= MEMORY_MAX))
    else:
        t.update(value=None, verdict="n/a", why="needs comet at 32k and a longer length")
    out["comet_flat_memory"] = t
    # speed-up
    t = {"target": f"full / comet prefill time at 64k >= {SPEEDUP_MIN}"}
    c, f = ok.get(("comet", 64 * 1024)), ok.get(("full", 64 * 1024))
    shorter = sorted((r for r in ok.values() if r["mode"] == "full" and r["length"] < 64 * 1024),
                     key=lambda r: r["length"])
    if c and f:
        ratio = f["prefill_s"] / c["prefill_s"]
        t.update(value=ratio, verdict=verdict(ratio, ratio >= SPEEDUP_MIN))
    elif c and shorter:
        # Full mode was skipped at 64k. Its prefill time per token never falls as the prompt
        # grows (every block attends over the whole cache, which grows with the prompt), so
        # scaling the longest measured full run linearly is a lower bound; quadratically, an estimate.
        r = shorter[-1]
        scale = 64 * 1024 / r["length"]
        lower, est = r["prefill_s"] * scale / c["prefill_s"], r["prefill_s"] * scale ** 2 / c["prefill_s"]
        t.update(value=lower, estimate=est, verdict="PASS (lower bound)" if lower >= SPEEDUP_MIN else "n/a",
                 why=f"full not measured at 64k: lower bound = full {format_length(r['length'])} time x "
                     f"{scale:g} (linear), estimate x {scale ** 2:g} (quadratic) = {est:.0f}x")
    else:
        t.update(value=None, verdict="n/a", why="needs comet and full at 64k")
    common = sorted(L for (m, L) in ok if m == "full" and ("comet", L) in ok)
    if common:
        t["measured_ratios"] = {format_length(L): ok["full", L]["prefill_s"] / ok["comet", L]["prefill_s"] for L in common}
    out["comet_speedup_64k"] = t
    return out


def table(rows: list[dict]) -> str:
    head = (f"{'length':>8} {'mode':>6} {'prefill s':>10} {'tok/s':>10} {'peak MB':>9} {'+MB':>7} {'state MB':>9} "
            f"{'decode ms/tok':>13} {'compile s':>9}")
    lines = [head, "-" * len(head)]
    for r in sorted(rows, key=lambda r: (r["length"], MODES.index(r["mode"]))):
        if r["status"] != "ok":
            lines.append(f"{format_length(r['length']):>8} {r['mode']:>6} {r['status']}: {r.get('reason', '')}")
            continue
        dev = f" (device peak {r['peak_device_mb']:.0f} MB)" if "peak_device_mb" in r else ""
        lines.append(f"{format_length(r['length']):>8} {r['mode']:>6} {r['prefill_s']:10.2f} {r['tokens_per_s']:10,.0f} "
                     f"{r['peak_rss_mb']:9.0f} {r['rss_growth_mb']:7.0f} {r['state_mb']:9.2f} "
                     f"{r['decode_ms_per_token']:13.2f} "
                     f"{r['compile_s']:9.1f}{dev}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode, style in (("comet", "o-"), ("full", "s--")):
        pts = sorted((r for r in rows if r["mode"] == mode and r["status"] == "ok"), key=lambda r: r["length"])
        if not pts:
            continue
        x = [r["length"] for r in pts]
        ax_t.plot(x, [r["prefill_s"] for r in pts], style, label=mode)
        mem_key = "peak_device_mb" if all("peak_device_mb" in r for r in pts) else "peak_rss_mb"
        what = "RSS" if mem_key == "peak_rss_mb" else "device"
        ax_m.plot(x, [r[mem_key] for r in pts], style, label=f"{mode} ({what})")
    comet = sorted((r for r in rows if r["mode"] == "comet" and r["status"] == "ok"), key=lambda r: r["length"])
    if len(comet) >= 2:  # slope-1 reference through the first comet point
        x0, y0, x1 = comet[0]["length"], comet[0]["prefill_s"], comet[-1]["length"]
        ax_t.plot([x0, x1], [y0, y0 * x1 / x0], ":", color="gray", label="linear")
    mems = [line.get_ydata() for line in ax_m.get_lines()]
    if mems:  # a span of at least 4x, so that runtime noise in a flat line does not look like growth
        lo, hi = min(min(m) for m in mems), max(max(m) for m in mems)
        ax_m.set_ylim(min(lo, hi / 4) / 1.5, hi * 1.5)
    for ax, ylabel in ((ax_t, "prefill time (s)"), (ax_m, "peak memory (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda y, _: f"{y:g}"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: format_length(int(x)) if x >= 1 else f"{x:g}"))
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_lines():
            ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_png(fig, path)


def build_results(rows: list[dict], args, argv, wall_s: float, complete: bool) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    info = ok[0]["info"] if ok else {}
    device = ok[0]["device"] if ok else None
    if ok and ok[0]["platform"] == "cpu":
        device = f"{device} ({cpu_name()}, {os.cpu_count()} cores)"
    return {
        "date": date.today().isoformat(), "device": device, "host": platform.node(),
        "command": "python -m eval.bench_long " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {"preset": args.preset, "checkpoint": args.checkpoint, "batch": args.batch,
                   "decode_tokens": args.decode_tokens, "full_limit_s": args.full_limit_s,
                   "lengths": args.lengths, "modes": args.modes, **info},
        "timing": {"prefill": "Generator.prefill after a warm-up compile run, block_until_ready",
                   "decode": "comet_jax.infer.generate.decode_loop timed separately, greedy, ms per step",
                   "memory": "peak RSS (VmHWM) of a fresh child process per measurement"},
        "measurements": [{k: v for k, v in r.items() if k != "info"} for r in rows],
        "targets": targets(rows),
        "wall_s": wall_s,
        "complete": complete,
    }


def write_results(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "results.json", (json.dumps(results, indent=2) + "\n").encode())


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.child is not None:
        return child_main(args.child)
    if args.checkpoint and not Path(args.checkpoint).is_dir():
        ap.error(f"--checkpoint {args.checkpoint} is not a directory")
    if args.stride is not None and (args.stride == 0 or args.stride < -1):
        ap.error(f"--stride must be > 0 or -1, got {args.stride}")
    for key in ("global_size", "budget"):
        if getattr(args, key) is not None and getattr(args, key) < 0:
            ap.error(f"--{key.replace('_', '-')} must be >= 0")
    overrides = {k: getattr(args, k) for k in ("chunk_size", "global_size", "stride", "budget", "block_chunks",
                                               "full_block")}
    common = {"preset": args.preset, "checkpoint": args.checkpoint, "dtype": args.dtype, "batch": args.batch,
              "decode_tokens": args.decode_tokens, "overrides": overrides, "attention": args.attention}
    try:  # configuration errors here, not in every child
        build_configs(common)
    except Exception as e:  # noqa: BLE001  (ConfigError, CheckpointError, a bad meta file)
        ap.error(f"{type(e).__name__}: {e}")
    try:
        out = check_out_dir(args.out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    src = args.checkpoint or f"preset {args.preset}"
    print(f"bench_long: {src}, lengths {','.join(format_length(n) for n in args.lengths)}, modes {','.join(args.modes)}, "
          f"batch {args.batch}, {args.decode_tokens} decode tokens; one child process per measurement", flush=True)
    rows: list[dict] = []
    t_start = time.perf_counter()
    for mode in args.modes:
        prev, stop = None, None
        for length in args.lengths:
            if stop is None and mode == "full":
                why = full_skip_reason(length, prev, args.full_limit_s)
                stop = why
            if stop is not None:
                rows.append({"mode": mode, "length": length, "status": "skipped", "reason": stop})
                print(f"{mode:>5} {format_length(length):>5}: skipped ({stop})", flush=True)
                continue
            timeout = args.child_timeout_s
            if mode == "full":
                timeout = min(timeout, 3 * args.full_limit_s + 300)
            res = spawn({**common, "mode": mode, "length": length}, timeout)
            rows.append(res)
            write_results(build_results(rows, args, argv, time.perf_counter() - t_start, False), out)
            if res["status"] == "ok":
                print(f"{mode:>5} {format_length(length):>5}: prefill {res['prefill_s']:.2f}s "
                      f"({res['tokens_per_s']:,.0f} tok/s), peak {res['peak_rss_mb']:.0f} MB, decode "
                      f"{res['decode_ms_per_token']:.2f} ms/tok  [{time.perf_counter() - t_start:.0f}s elapsed]",
                      flush=True)
                prev = res
            else:
                print(f"{mode:>5} {format_length(length):>5}: {res['status']} ({res.get('reason')})", flush=True)
                if mode == "full":
                    stop = f"full mode failed at {format_length(length)}: {res.get('reason')}"

    results = build_results(rows, args, argv, time.perf_counter() - t_start, True)
    ok = [r for r in rows if r["status"] == "ok"]
    info = ok[0]["info"] if ok else {}
    device, tg = results["device"], results["targets"]
    print()
    print(f"device: {device}; model: {info.get('source')}, {info.get('n_params', 0) / 1e6:.2f}M parameters, "
          f"{info.get('dtype')}")
    print(table(rows))
    print()
    for name, t in tg.items():
        val = "-" if t["value"] is None else f"{t['value']:.2f}"
        extra = f", log-log slope {t['loglog_slope']:.2f}" if t.get("loglog_slope") is not None else ""
        lens = f" ({format_length(t['lengths'][1])} vs {format_length(t['lengths'][0])})" if t.get("lengths") else ""
        print(f"{t['verdict']:>4}  {name}: {val}{lens}{extra}  [{t['target']}]{' - ' + t['why'] if 'why' in t else ''}")
        if t.get("measured_ratios"):
            print("      full / comet prefill time measured at " +
                  ", ".join(f"{k}: {v:.0f}x" for k, v in t["measured_ratios"].items()))
    write_results(results, out)
    title = (f"CoMeT vs full prefill, {info.get('source')}, {info.get('n_params', 0) / 1e6:.1f}M params, "
             f"{info.get('dtype')}, batch {args.batch}; {device}")
    plot(rows, out / "bench_long.png", title)
    print(f"wrote {out / 'results.json'} and {out / 'bench_long.png'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
