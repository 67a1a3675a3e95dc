"""comet-export (or python -m comet_jax.export) SRC DST [options]

Write a Hugging Face directory (safetensors shards + index, config.json, tokenizer,
generation_config.json) from a converted checkpoint (a directory with comet_jax.json and
params/) or a training run directory (RUN_DIR with checkpoints/: the newest readable step
unless --step; of a run trained with optim.ema, the weight average, as RUN_DIR/model, unless
--raw).

Layouts: official (MemQwen3ForCausalLM, what the official CoMeT code loads; Qwen3 with
memory), native (any backbone with memory: plain HF names plus the memory nets, CoMeT
settings under "comet_jax" in config.json; transformers loads the backbone, our converter
all of it), plain (LlamaForCausalLM / Qwen3ForCausalLM without memory; a model with memory
needs --drop-memory). Default: official for a Qwen3 with memory, plain for a model without,
native otherwise.

The tensors are streamed block by block from the checkpoint into the shards, so host
memory holds about one block, not a shard or the model. Everything is written into a
temporary directory next to DST and renamed into place: a failed or stopped export leaves
nothing at DST.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    # nothing here runs on an accelerator: do not probe for one (slow, and noisy where a TPU
    # runtime is installed without a TPU)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from comet_jax.export.tensors import LAYOUTS
    from comet_jax.export.write import DEFAULT_SHARD_SIZE, DTYPES

    ap = argparse.ArgumentParser(prog="comet-export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", metavar="SRC", help="converted checkpoint, or training run directory")
    ap.add_argument("dst", metavar="DST", help="output HF directory (must not exist unless --overwrite)")
    ap.add_argument("--step", type=int, help="training step to export (run directories; default: the newest)")
    ap.add_argument("--dtype", choices=DTYPES, help="tensor dtype (default: the checkpoint's parameter dtype)")
    ap.add_argument("--layout", choices=LAYOUTS, help="official, native or plain (default: see above)")
    ap.add_argument("--shard-size", default=DEFAULT_SHARD_SIZE,
                    help=f"largest safetensors shard, e.g. 5GB, 500MB, 2GiB (default {DEFAULT_SHARD_SIZE})")
    ap.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    ap.add_argument("--drop-memory", action="store_true",
                    help="leave out the memory nets: the plain backbone (CoMeT token rows are kept)")
    ap.add_argument("--raw", action="store_true",
                    help="a run trained with optim.ema: export the step's raw parameters, not the weight average "
                         "(the default, as in RUN_DIR/model)")
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    from comet_jax.checkpoint import CheckpointError, mmap_large_buffers
    from comet_jax.config import ConfigError
    from comet_jax.export import ExportError
    from comet_jax.export.write import export

    mmap_large_buffers()  # host memory stays at about one block (docs/guide/export.md)
    try:
        summary = export(args.src, args.dst, step=args.step, dtype=args.dtype, layout=args.layout,
                         shard_size=args.shard_size, overwrite=args.overwrite, drop_memory=args.drop_memory,
                         raw=args.raw, log=log)
    except (ExportError, CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: nothing was written to {args.dst}", file=sys.stderr)
        return 130
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
