"""comet-plan --search: try the layouts a user would, compile the likely winners, rank those that fit.

Candidates keep the user's recipe (train.batch_size, data.seq_len, mesh.data, the model) and
vary what only changes how the step is laid out: the split of the devices over mesh.fsdp /
mesh.tensor / mesh.stage, model.schedule, model.remat, optim.grad_accum and, with tensor > 1,
`mesh.rules={activation_embed: tensor}` (one sequence's hidden states split over tensor too).
Compiling is the only trustworthy memory figure and costs seconds to minutes per layout, so at
most `--search-limit` are compiled: the fastest-looking first, those a rough byte estimate
(calibrated on each compile) puts over the device memory last, and none whose answer a compiled
neighbour already gives (a leaner variant did not fit; a heavier one fits at the same speed).
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from typing import Callable

GB = 1e9

# Step-time factors: ESTIMATES, not measurements. Training is ~3 forward passes of FLOPs;
# recomputing the forward in the backward adds ~1 (4/3); `dots` saves the matmul outputs and
# recomputes only elementwise work (~10%).
RECOMPUTE = {"none": 1.0, "dots": 1.1, "full": 4 / 3, "offload": 4 / 3}
# offload nests two recomputes where the schedule nests two loops (layer-major, the pipeline:
# comet_jax/model/remat.py split_policy): the outer step's forward, then each chunk's again
NESTED_OFFLOAD = 5 / 3


def recompute(remat: str, schedule: str, stage: int) -> float:
    if remat == "offload" and (schedule == "layer_major" or stage > 1):
        return NESTED_OFFLOAD
    return RECOMPUTE[remat]
SEARCH_REMATS = ("full", "offload", "dots")  # full first: offload ties with it but copies to host
SEARCH_SCHEDULES = ("layer_major", "chunk_major")
# HBM order of the remat policies at one layout (offload <= full <= dots <= none): used only to
# skip a layout whose answer a compiled neighbour gives
REMAT_MEMORY_RANK = {"offload": 0, "full": 1, "dots": 2, "none": 3}
# bytes per parameter on its shard: float32 weights, Adam's two moments, float32 gradients
STATE_BYTES_PER_PARAM = 16
EMBED_RULE = {"activation_embed": "tensor"}


def size(n) -> str:
    """GB, or MB below 0.1 GB (a tiny config's figures would all read 0.00 GB)."""
    return "-" if n is None else f"{n / GB:.2f} GB" if n >= 0.1 * GB else f"{n / 1e6:.2f} MB"


def bubble(stages: int, layers: int) -> float:
    """Pipeline fill and drain: P stages run L + P - 1 layer steps for L layers' work
    (comet_jax/parallel/pipeline.py scans num_layers + num_stages - 1 waves)."""
    return (layers + stages - 1) / layers


@dataclasses.dataclass
class Candidate:
    fsdp: int
    tensor: int
    stage: int
    schedule: str
    remat: str
    accum: int
    rules: dict  # mesh.rules of the candidate (the user's, plus EMBED_RULE where tried)
    cost: float = 1.0  # relative step time: RECOMPUTE x bubble (same FLOPs and devices for all)
    prior: float = 0.0  # rough bytes per device, only to order the compiles

    @property
    def layout(self) -> tuple:
        return self.fsdp, self.tensor, self.stage, self.schedule, tuple(sorted(self.rules.items()))

    def overrides(self, base_rules: dict) -> list[str]:
        out = [f"mesh.fsdp={self.fsdp}", f"mesh.tensor={self.tensor}", f"mesh.stage={self.stage}",
               f"model.schedule={self.schedule}", f"model.remat={self.remat}", f"optim.grad_accum={self.accum}"]
        if self.rules != base_rules:
            out.append("mesh.rules={" + ", ".join(f"{k}: {v}" for k, v in self.rules.items()) + "}")
        return out

    def text(self, base_rules: dict) -> str:
        """The overrides as one shell-quoted string, to paste after the command."""
        return shlex.join(self.overrides(base_rules))


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidates(cfg, devices: int, chunks: int, kv_heads: int, layers: int) -> list[Candidate]:
    """Every layout of `devices` the config's checks allow: fsdp*tensor*stage = devices/data,
    tensor divides kv_heads, stage divides the chunks of a sequence (CoMeT mode only), each
    micro-batch (batch/accum) splits evenly over data*fsdp."""
    data, batch, base_rules = cfg.mesh.data, cfg.train.batch_size, dict(cfg.mesh.rules)
    if devices % data:
        return []
    out = []
    for tensor in divisors(devices // data):
        if kv_heads % tensor:
            continue
        for stage in divisors(devices // data // tensor):
            if stage > 1 and (cfg.comet.mode != "comet" or chunks % stage):
                continue
            fsdp = devices // data // tensor // stage
            rule_sets = [base_rules]
            if tensor > 1 and base_rules.get("activation_embed") != "tensor":
                rule_sets.append({**base_rules, **EMBED_RULE})
            accums = [a for a in divisors(batch) if (batch // a) % (data * fsdp) == 0]
            for rules in rule_sets:
                for schedule in SEARCH_SCHEDULES:
                    for remat in SEARCH_REMATS:
                        for accum in accums:
                            out.append(Candidate(fsdp, tensor, stage, schedule, remat, accum, rules,
                                                 cost=recompute(remat, schedule, stage) * bubble(stage, layers)))
    return out


def prior_bytes(c: Candidate, cfg, model, params: int, slots_per_token: float) -> float:
    """A rough per-device byte estimate: sharded state plus the saved activations of the remat
    policy plus one layer's working set. Only orders the compiles (it is rescaled by what the
    compiler reports); never shown as a result."""
    d, f = model.hidden_size, model.intermediate_size
    hq, hkv = model.num_heads * model.head_dim, model.num_kv_heads * model.head_dim
    act = 2 if model.dtype in ("bfloat16", "float16") else 4
    tokens = cfg.train.batch_size / c.accum / (cfg.mesh.data * c.fsdp) * cfg.data.seq_len / c.stage * slots_per_token
    width = d / c.tensor if c.rules.get("activation_embed") == "tensor" else d
    saved = {"offload": 0.0, "full": width, "dots": width + (hq + 2 * hkv + 2 * f) / c.tensor + d,
             "none": width + (hq + 2 * hkv + 4 * f) / c.tensor + 3 * d}[c.remat]
    working = (hq + 2 * hkv + 3 * f) / c.tensor + 4 * width
    state = params * STATE_BYTES_PER_PARAM / (c.fsdp * c.tensor)
    return state + tokens * act * (model.num_layers * saved + 2 * working)


def needed_bytes(r: dict) -> float | None:
    """Per-device bytes a result needs: the compiler's total, or for a refusal that names only
    the temporaries, temporaries + parameters and optimizer state (a lower bound)."""
    if r.get("total_bytes_per_device"):
        return r["total_bytes_per_device"]
    if r.get("temp_bytes_per_device"):
        return r["temp_bytes_per_device"] + r.get("params_opt_bytes_per_device", 0)
    return None


def answered_by(c: Candidate, done: list[tuple[Candidate, dict]]) -> str | None:
    """Why compiling `c` would tell nothing new, or None. At one layout, less recompute or a
    smaller grad_accum never needs less memory; more never runs faster."""
    for o, r in done:
        if o.layout != c.layout or r.get("refused"):  # a failed compile says nothing about memory
            continue
        heavier = REMAT_MEMORY_RANK[c.remat] >= REMAT_MEMORY_RANK[o.remat] and c.accum <= o.accum
        leaner = REMAT_MEMORY_RANK[c.remat] <= REMAT_MEMORY_RANK[o.remat] and c.accum >= o.accum
        if r["fits"] is False and heavier:
            return "a leaner variant does not fit"
        if r["fits"] and leaner and c.cost >= o.cost:
            return "a variant needing more memory fits at the same speed"
    return None


def order_key(c: Candidate, scale: float, hbm_bytes: float, base_schedule: str, broken: set):
    """Compile order: layouts whose mesh.stage has not failed to compile before those whose has
    (a pipeline that does not lower fails at every layout), then those the (calibrated)
    estimate puts within the device memory, then the fastest, then the plainest (no tensor
    split, fewer micro-batches, the user's schedule, full before offload)."""
    return (c.stage in broken, c.prior * scale > hbm_bytes, c.cost, c.tensor, c.accum, c.stage,
            c.schedule != base_schedule, SEARCH_REMATS.index(c.remat), c.prior)


def search(cfg, make_cfg: Callable, compile_one: Callable, model, params: int, slots_per_token: float,
           devices: int, chunks: int, hbm_bytes: float, limit: int, log: Callable) -> dict:
    """Compile up to `limit` candidates; returns {tried: [(candidate, result)], skipped (answered
    by a compiled neighbour), untried (left over at the limit), total}.
    `make_cfg(overrides)` gives a validated config (ConfigError otherwise) and `compile_one(cfg)`
    the plan's result dict; any exception of a compile is recorded, never raised."""
    from comet_jax import aot
    from comet_jax.config import ConfigError

    base_rules = dict(cfg.mesh.rules)
    pool = candidates(cfg, devices, chunks, model.num_kv_heads, model.num_layers)
    for c in pool:
        c.prior = prior_bytes(c, cfg, model, params, slots_per_token)
    total, done, skipped, ratios, broken = len(pool), [], 0, [], set()
    while pool and len(done) < limit:
        scale = math.exp(sum(ratios) / len(ratios)) if ratios else 1.0
        pool.sort(key=lambda c: order_key(c, scale, hbm_bytes, cfg.model.schedule, broken))
        c = pool.pop(0)
        if answered_by(c, done):
            skipped += 1
            continue
        text = c.text(base_rules)
        try:
            r = compile_one(make_cfg(c.overrides(base_rules)))
        except ConfigError as e:  # a layout the checks refuse is no candidate
            log(f"skipped {text}: {e}")
            total -= 1
            continue
        except Exception as e:  # noqa: BLE001 - any compile failure is this candidate's result
            r = {"fits": False, "refused": True, "error": aot.first_line(e)}
            broken.add(c.stage)
        done.append((c, r))
        need = needed_bytes(r)
        if need and c.prior:
            ratios.append(math.log(need / c.prior))
        verdict = ("fits" if r["fits"] else "compile failed: " + r["error"][:120] if r.get("refused")
                   else "does not fit")
        log(f"[{len(done)}/{limit}] {text}: " + (f"{size(need)}, " if need else "") + verdict)
    answered = sum(1 for c in pool if answered_by(c, done))
    return {"tried": done, "skipped": skipped + answered, "untried": len(pool) - answered, "total": total}


def ranked(tried: list[tuple[Candidate, dict]], base_rules: dict, step_s: Callable) -> list[dict]:
    """The search's summary rows: layouts that fit, fastest first, then the others, smallest first."""
    def row(c, r):
        out = {"overrides": c.text(base_rules), "fits": bool(r["fits"]),
               "total_bytes_per_device": r.get("total_bytes_per_device"),
               "host_temp_bytes_per_device": r.get("host_temp_bytes_per_device"),
               "step_s_est": step_s(c)}
        if not r.get("total_bytes_per_device") and r.get("temp_bytes_per_device"):
            out["temp_bytes_per_device"] = r["temp_bytes_per_device"]
        if r.get("error"):
            out["error"] = r["error"]
        return out

    fit = sorted((p for p in tried if p[1]["fits"]),
                 key=lambda p: (p[0].cost, needed_bytes(p[1]) or 0, SEARCH_REMATS.index(p[0].remat)))
    rest = sorted((p for p in tried if not p[1]["fits"]), key=lambda p: needed_bytes(p[1]) or math.inf)
    return [row(c, r) for c, r in fit + rest]
