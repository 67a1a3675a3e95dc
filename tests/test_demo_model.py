"""The trained demo model shipped in docs/demo/model (a CoMeT of a demo run, copied there by
comet-demo with its card): it loads with comet-passkey and retrieves keys at its training
length, so a newcomer sees the memory work without training anything."""

import json
import re
from pathlib import Path

from comet_jax import checkpoint
from comet_jax.evals.passkey import main as passkey

DEMO = Path(__file__).resolve().parents[1] / "docs" / "demo"
MODEL = DEMO / "model"


def test_the_shipped_model_is_small_and_its_card_has_the_demo_run_numbers():
    size = sum(p.stat().st_size for p in MODEL.rglob("*") if p.is_file())
    assert size < 3_000_000, size  # shipped in git
    _, model, comet, meta = checkpoint.load(MODEL)
    assert meta["train"]["seq_len"] == 512 and meta["train"]["mode"] == "comet"
    card = (MODEL / "README.md").read_text()
    assert "python -m eval.passkey --checkpoint docs/demo/model" in card
    # the card is the one of the run whose results the demo's artefacts hold (seed N: docs/demo/seedN)
    seed = int(re.match(r"# The passkey demo's CoMeT model \(seed (\d+)\)", card).group(1))
    results = json.loads((DEMO / (f"seed{seed}" if seed else "") / "results.json").read_text())
    assert results["seed"] == seed
    comet_row = next(line for line in card.splitlines() if line.startswith("| as in training |"))
    r = results["models"]["comet"]
    assert comet_row == "| as in training | " + " | ".join(
        f"{r['exact_by_length'][n]:.2f} ({r['accuracy_by_length'][n]:.2f})" if n in r["accuracy_by_length"]
        else "not run" for n in sorted(r["accuracy_by_length"], key=int)) + " |"


def test_the_shipped_model_retrieves_at_its_training_length(tmp_path):
    out = tmp_path / "passkey"
    assert passkey(["--checkpoint", str(MODEL), "--lengths", "512", "--depths", "0,0.5,1", "--samples", "2",
                    "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["exact_by_length"] == {"512": 1.0}


def test_the_readme_table_is_the_committed_spread_over_seeds():
    """The README's demo rows are docs/demo/seeds.json's min / mean, and seed 0's entry there is
    the run whose model is shipped."""
    record = json.loads((DEMO / "seeds.json").read_text())
    assert record["seeds"] == [0, 1, 2, 3]
    readme = (DEMO.parents[1] / "README.md").read_text()
    lengths = ("512", "2048", "8192", "16384")
    for label, row in (("CoMeT, min / mean over seeds 0–3", "CoMeT (memory)"),
                       ("CoMeT, held-out prompt, min / mean", "CoMeT (memory), held-out prompt")):
        cells = record["spread"][row]
        assert f"| {label} | " + " | ".join(f"{cells[n]['min']:.2f} / {cells[n]['mean']:.2f}" if n in cells
                                            else "not run" for n in lengths) + " |" in readme
    shipped = json.loads((DEMO / "results.json").read_text())["models"]["comet"]["exact_by_length"]
    assert record["per_seed"]["0"]["CoMeT (memory)"] == shipped
