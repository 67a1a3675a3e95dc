"""python -m eval.pipeline_plan --config configs/X.yaml [section.key=value ...] [--stages 1,2,4,8]

Size a pipeline run before renting the slice: for the config's model, sequence length
and CoMeT settings, print for each number of stages P the wavefront's idle fraction
(P-1)/(L+P-1), per-device parameter + optimizer memory, activation memory (the
layer-boundary hidden states that remat keeps), the bytes each device sends to its
neighbour per optimizer step (memories) and the layer weights it receives (each device
holds 1/P of every parameter and reassembles the layer it runs at each step). Pure arithmetic: nothing is compiled or allocated.
"""

from __future__ import annotations

import sys

from comet_jax.train.train_config import config_parser
from comet_jax.train.train_config_checks import load_valid


def plan(cfg, model, comet, stages: int) -> dict:
    from comet_jax.train.flops import param_count
    from comet_jax.layout import Slots

    L, d = model.num_layers, model.hidden_size
    seq, c = cfg.data.seq_len, comet.chunk_size
    n = -(-seq // c)
    n = -(-n // stages) * stages  # padded with masked chunks to a multiple of P
    dp = cfg.mesh.data * cfg.mesh.fsdp
    shard = cfg.mesh.fsdp * cfg.mesh.tensor
    b = max(1, cfg.train.batch_size // dp // cfg.optim.grad_accum)  # sequences per device per micro-batch
    pbytes = 2 if model.param_dtype == "bfloat16" else 4
    abytes = 2 if model.dtype == "bfloat16" else 4
    params = param_count(model, comet)
    slots = Slots.of(comet).size
    steps = L + stages - 1
    activations = steps * (n // stages) * b * slots * d * abytes
    memory_elems = (2 * comet.global_size + comet.budget) * d if comet.has_memory else 0
    p2p = 2 * steps * b * memory_elems * abytes * cfg.optim.grad_accum if stages > 1 else 0
    # forward, the backward's re-assembly, and the gradient blocks sent back: 3 x (P-1)/P of a
    # layer per wave step, in the compute dtype, per fsdp x tensor shard
    layer = (params - model.vocab_size * d * (1 if model.tie_embeddings else 2)) / L
    weights = 3 * steps * layer * (stages - 1) / stages * abytes / shard * cfg.optim.grad_accum
    return {"P": stages, "chunks/device": n // stages, "idle": (stages - 1) / steps,
            "params+opt GB": (params * pbytes + params * 8) / shard / stages / 1e9,
            "activations GB": activations / 1e9, "p2p MB/step": p2p / 1e6, "weights GB/step": weights / 1e9}


def main(argv: list[str] | None = None) -> int:
    ap = config_parser("python -m eval.pipeline_plan", __doc__)
    ap.add_argument("--stages", default="1,2,4,8", help="numbers of pipeline stages to compare")
    args = ap.parse_args(argv)
    from comet_jax.config import ConfigError
    from comet_jax.train.run_setup import build_model, load_tokenizer

    try:
        cfg = load_valid(args)
        model, comet = build_model(cfg, load_tokenizer(cfg))
        stages = [int(s) for s in args.stages.split(",")]
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = [plan(cfg, model, comet, p) for p in stages]
    print(f"L={model.num_layers} layers, D={model.hidden_size}, seq {cfg.data.seq_len}, C={comet.chunk_size}, "
          f"G={comet.global_size}, budget={comet.budget}, mesh data={cfg.mesh.data} fsdp={cfg.mesh.fsdp} "
          f"tensor={cfg.mesh.tensor}")
    head = list(rows[0])
    print("  ".join(f"{h:>15s}" for h in head))
    for r in rows:
        print("  ".join(f"{r[h]:>15.3f}" if isinstance(r[h], float) else f"{r[h]:>15d}" for h in head))
    return 0


if __name__ == "__main__":
    sys.exit(main())
