"""comet-train (or python -m train) --config configs/X.yaml [section.key=value ...] [--print-config]

Train (or fine-tune) a CoMeT model from one YAML config; any key can be overridden on
the command line, e.g. `optim.lr=1e-4 mesh.fsdp=4 train.steps=50`. Running the same
command again resumes from the latest checkpoint in the run directory.
"""

from __future__ import annotations

import os
import sys

from comet_jax.train.train_config import config_parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before jax is imported
    ap = config_parser("comet-train", __doc__)
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = ap.parse_args(argv)

    from comet_jax.config import ConfigError
    from comet_jax.train.train_config import dump_yaml
    from comet_jax.train.train_config_checks import load_valid, validate, validate_data, validate_paths

    try:
        cfg = load_valid(args)
        if not args.print_config:
            validate_paths(cfg)
            validate_data(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        from comet_jax.train.curriculum import describe_curriculum

        stages = describe_curriculum(cfg)
        # as comments, so that the output still loads as this config
        print(dump_yaml(cfg) + "".join(f"\n# {line}" for line in
                                        ["the curriculum as it runs (inherited settings filled in):", *stages]
                                        if stages))
        return 0

    import jax

    from comet_jax.parallel.distributed import maybe_initialize

    try:
        maybe_initialize(cfg.distributed)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        validate(cfg, device_count=jax.device_count(), process_count=jax.process_count())
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from comet_jax.train.trainer import main_loop

    try:
        return main_loop(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
