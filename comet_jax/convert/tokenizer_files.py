"""Copy a source tokenizer next to the converted checkpoint, with CoMeT's special tokens.

The `tokenizers` library numbers added tokens sequentially after its own vocabulary,
ignoring the ids written in tokenizer.json, while the converter puts the CoMeT rows
right after the model's embedding rows (which may outnumber the tokenizer's vocabulary,
as in Qwen3). Unused filler tokens close that gap so every CoMeT token gets exactly the
id of its row; the result is checked by reloading.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from comet_jax.config import CometConfig

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json")


def comet_token_names(comet: CometConfig) -> dict[int, str]:
    names = {}
    if comet.has_memory:
        names[comet.placeholder_id] = "<|comet_placeholder|>"
    if comet.has_temp:
        names[comet.temp_beacon_id] = "<|comet_temp_beacon|>"
    for j, i in enumerate(comet.global_beacon_ids):
        names[i] = f"<|comet_global_beacon_{j}|>"
    return names


def _added_entry(token_id: int, content: str) -> dict[str, Any]:
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}


def copy_with_comet_tokens(src: Path, dst: Path, comet: CometConfig, added: bool) -> str | None:
    """Copy tokenizer files; register the CoMeT tokens if `added`. Returns the file name of
    the tokenizer our tools load (tokenizer.json), or None when the source has none."""
    copied = [name for name in TOKENIZER_FILES if (src / name).is_file()]
    for name in copied:
        shutil.copy2(src / name, dst / name)
    if "tokenizer.json" not in copied:
        return None
    names = comet_token_names(comet)
    if not added or not names:
        return "tokenizer.json"

    from tokenizers import Tokenizer

    base = Tokenizer.from_file(str(src / "tokenizer.json"))
    size = base.get_vocab_size(with_added_tokens=True)
    first = min(names)
    if size > first:
        raise ValueError(f"{src}/tokenizer.json already has {size} tokens, more than the model's "
                         f"{first} embedding rows; cannot give CoMeT tokens their row ids")
    data = json.loads((src / "tokenizer.json").read_text())
    entries = [_added_entry(i, f"<|comet_unused_{i}|>") for i in range(size, first)]
    entries += [_added_entry(i, names[i]) for i in sorted(names)]
    data.setdefault("added_tokens", []).extend(entries)
    (dst / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))

    cfg_path = dst / "tokenizer_config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        if isinstance(cfg.get("added_tokens_decoder"), dict):
            for e in entries:
                cfg["added_tokens_decoder"][str(e["id"])] = {k: v for k, v in e.items() if k != "id"}
            cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))

    check = Tokenizer.from_file(str(dst / "tokenizer.json"))
    for token_id, content in names.items():
        if check.token_to_id(content) != token_id:
            raise ValueError(f"tokenizer gave {content} id {check.token_to_id(content)}, expected {token_id}")
    return "tokenizer.json"
