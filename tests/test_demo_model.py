"""The trained demo model shipped in docs/demo/model (a CoMeT trained from scratch by
`comet-demo`, seed 0): it loads with comet-passkey and retrieves keys at its training length,
so a newcomer sees the memory work without training anything."""

import json
from pathlib import Path

from comet_jax import checkpoint
from comet_jax.evals.passkey import main as passkey

MODEL = Path(__file__).resolve().parents[1] / "docs" / "demo" / "model"


def test_the_shipped_model_is_small_and_described():
    size = sum(p.stat().st_size for p in MODEL.rglob("*") if p.is_file())
    assert size < 3_000_000, size  # shipped in git
    _, model, comet, meta = checkpoint.load(MODEL)
    assert meta["train"]["seq_len"] == 512 and meta["train"]["mode"] == "comet"
    card = (MODEL / "README.md").read_text()
    assert "seed 0" in card and "comet-passkey" in card


def test_the_shipped_model_retrieves_at_its_training_length(tmp_path):
    out = tmp_path / "passkey"
    assert passkey(["--checkpoint", str(MODEL), "--lengths", "512", "--depths", "0,0.5,1", "--samples", "2",
                    "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["exact_by_length"] == {"512": 1.0}
