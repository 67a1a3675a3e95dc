"""What the passkey demo writes about its models: the figures (accuracy by length, training
loss) and the markdown table of one results record (comet_jax/demo/passkey_demo.py)."""

from __future__ import annotations

from pathlib import Path

LABELS = {"comet": "CoMeT (memory)", "full": "full attention", "nomem": "CoMeT, memory off"}


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from comet_jax.evals.common import save_png

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, res in results["models"].items():
        xs = [int(n) for n in res["accuracy_by_length"]]
        ax.plot(xs, list(res["accuracy_by_length"].values()), "o-", label=LABELS.get(name, name))
    ax.axvline(results["train_seq_len"], color="grey", ls=":", label="training length")
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("passkey accuracy (mean over depths)")
    ax.set_title("passkey retrieval beyond the training length")
    ax.legend()
    fig.tight_layout()
    save_png(fig, out / "accuracy_vs_length.png")

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, res in results["models"].items():
        steps, losses = res["train_loss"]["steps"], res["train_loss"]["loss"]
        if steps:
            k = max(1, len(losses) // 50)  # running mean for a readable curve
            smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1:], smooth, label=LABELS.get(name, name))
    ax.axhline(5 * np.log(10) / 6, color="grey", ls=":", label="chance (digits unknown)")
    ax.set_xlabel("step")
    ax.set_ylabel("answer-token loss")
    ax.set_yscale("log")
    ax.set_title("training loss")
    ax.legend()
    fig.tight_layout()
    save_png(fig, out / "train_loss.png")


def summary_table(results: dict) -> str:
    """Markdown table: model x length, mean over depths of exact match (and of "starts with")."""
    seq = results["train_seq_len"]
    lengths = sorted({int(n) for r in results["models"].values() for n in r["accuracy_by_length"]}
                     | {int(n) for r in results["models"].values() for n in r.get("not_run_lengths", [])})
    head = "| model | " + " | ".join(f"{n} ({n / seq:g}x)" for n in lengths) + " |"
    rows = [head, "|" + " --- |" * (len(lengths) + 1)]

    def row(label: str, r: dict) -> str:
        acc = {int(k): v for k, v in r["accuracy_by_length"].items()}
        exact = {int(k): v for k, v in r.get("exact_by_length", {}).items()}
        return f"| {label} | " + " | ".join(
            (f"{exact[n]:.2f} ({acc[n]:.2f})" if n in exact else f"{acc[n]:.2f}") if n in acc else "not run"
            for n in lengths) + " |"

    for name, r in results["models"].items():
        rows.append(row(LABELS.get(name, name), r))
        if "held_out" in r:
            rows.append(row(LABELS.get(name, name) + ", held-out prompt", r["held_out"]))
    return "\n".join(rows)
