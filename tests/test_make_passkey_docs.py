"""eval.make_passkey_docs: passkey documents for eval.loss (answers masked) and items for eval.tasks."""

import json
import re

import numpy as np

from comet_jax.data.passkey import QUESTION
from comet_jax.data.passkey_tokenizer import passkey_tokenizer
from eval.make_passkey_docs import main


def test_loss_docs_mask_the_answers(tmp_path, capsys):
    out = tmp_path / "d.jsonl"
    assert main(["--out", str(out), "--docs", "2", "--tokens", "3000", "--episode", "300", "--end", "."]) == 0
    tok = passkey_tokenizer()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and rows[0] != rows[1]
    for r in rows:
        ids, mask = np.asarray(r["input_ids"]), np.asarray(r["loss_mask"], bool)
        assert 3000 - 300 < len(ids) <= 3000 and ids.shape == mask.shape
        text = tok.decode(ids.tolist())
        keys = re.findall(r"The pass key is (\d+)\. Remember it\.", text)
        assert len(keys) == len(re.findall(re.escape(QUESTION), text)) == 3000 // 300
        assert tok.decode(ids[mask].tolist()) == "".join(f" {k}." for k in keys)
    assert main(["--out", str(out), "--docs", "2", "--tokens", "3000", "--episode", "300", "--end", "."]) == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows  # seeded


def test_task_items_and_errors(tmp_path, capsys):
    out = tmp_path / "t.jsonl"
    assert main(["--out", str(out), "--format", "tasks", "--docs", "3", "--tokens", "400"]) == 0
    items = [json.loads(line) for line in out.read_text().splitlines()]
    for it in items:
        assert it["prompt"].endswith(QUESTION) and f"The pass key is {it['answers'][0]}." in it["prompt"]
        assert len(passkey_tokenizer().encode(it["prompt"]).ids) <= 400
    bad = tmp_path / "bad.jsonl"
    assert main(["--out", str(bad), "--format", "tasks", "--tokens", "30"]) == 2
    assert "minimum" in capsys.readouterr().err and not bad.exists()
    assert main(["--out", str(bad), "--end", "7"]) == 2 and not bad.exists()
