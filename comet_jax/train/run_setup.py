"""What a training run is built from, outside the loop: its tokenizer, its model and CoMeT
configs, and what a run started from a converted checkpoint passes on to its exports.
(comet-train, comet-export of a run directory, comet-lower and the pipeline planner use them.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from comet_jax import build, checkpoint
from comet_jax.config import CometConfig, ConfigError, ModelConfig


def load_tokenizer(cfg) -> Any:
    from comet_jax.io.tokenizer import load_tokenizer as from_ckpt, tokenizer_by_name

    name = cfg.data.tokenizer
    if name == "checkpoint":
        tok = from_ckpt(cfg.model.init)
        if tok is None:
            raise ConfigError(f"data.tokenizer=checkpoint but {cfg.model.init} has no tokenizer.json")
        return tok
    try:
        return tokenizer_by_name(name)
    except ValueError as e:
        raise ConfigError(f"data.tokenizer: {e} (use byte, passkey, checkpoint or a tokenizer.json path)") from None


def save_tokenizer(tokenizer, directory: Path, comet: CometConfig, log=print) -> str | None:
    """Write `tokenizer` as DIR/tokenizer.json with the CoMeT tokens registered at their ids,
    as the converter does (plain when it cannot be: a vocabulary larger than the first CoMeT
    id). Returns the file name for the checkpoint meta, or None for a tokenizer that cannot
    be saved (not a `tokenizers.Tokenizer`)."""
    import tempfile

    from comet_jax.convert import tokenizer_files

    if not hasattr(tokenizer, "save"):
        log(f"the tokenizer ({type(tokenizer).__name__}) cannot be saved; the exported checkpoint has none")
        return None
    with tempfile.TemporaryDirectory() as src:
        tokenizer.save(str(Path(src) / "tokenizer.json"))
        names = tokenizer_files.comet_token_names(comet)
        present = all(tokenizer.token_to_id(n) == i for i, n in names.items())
        try:
            return tokenizer_files.copy_with_comet_tokens(Path(src), Path(directory), comet, added=not present)
        except ValueError as e:
            log(f"tokenizer saved without CoMeT tokens: {e}")
            tokenizer.save(str(Path(directory) / "tokenizer.json"))
            return "tokenizer.json"


def carried_from_init(cfg) -> tuple[dict[str, Any], list[Path]]:
    """What a run started from a converted checkpoint passes on to its exports: the meta keys
    that describe the source HF model (its config.json, max_position_embeddings) and the side
    files an HF directory needs (generation_config.json; with data.tokenizer=checkpoint, the
    tokenizer's files, which already hold the CoMeT tokens). Nothing for a run from scratch."""
    from comet_jax.convert.tokenizer_files import TOKENIZER_FILES

    init = Path(cfg.model.init)
    if cfg.model.init == "scratch" or not (init / checkpoint.META_FILE).is_file():
        return {}, []
    _, _, meta = checkpoint.read_meta(init)
    keep = {k: meta[k] for k in ("hf_config", "max_position_embeddings") if k in meta}
    names = TOKENIZER_FILES if cfg.data.tokenizer == "checkpoint" else ("generation_config.json",)
    return keep, [init / n for n in names if (init / n).is_file()]


def build_model(cfg, tokenizer) -> tuple[ModelConfig, CometConfig]:
    """Model and CoMeT configs: from a converted checkpoint, or from scratch around the
    tokenizer's vocabulary plus the CoMeT tokens (padded to a multiple of 256)."""
    base = None if cfg.model.init != "scratch" or cfg.model.vocab_size else tokenizer.get_vocab_size()
    model, comet, _ = build.from_sections(cfg.model, cfg.comet, base)
    return model, comet
