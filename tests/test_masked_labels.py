"""Training on records with `labels` (-100 = not scored): the CoMeT loss of a batch read from
JSONL equals the mean next-token loss over exactly the scored tokens, computed by hand from the
model's teacher-forced logits."""

import json

import jax
import numpy as np

from comet_jax.data.pipeline import JsonlSource, make_loader
from comet_jax.model import comet as cm
from test_comet import COMET, MODEL, random_params


def test_comet_loss_counts_only_the_labelled_tokens(tmp_path):
    rng = np.random.default_rng(7)
    docs = [rng.integers(1, 50, n) for n in (20, 13)]
    scored = [rng.random(len(d)) < 0.6 for d in docs]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"input_ids": d.tolist(), "labels": np.where(m, d, -100).tolist()}) + "\n"
                            for d, m in zip(docs, scored)))
    loader = make_loader(JsonlSource(path), seq_len=32, batch_size=2, comet_cfg=COMET, mode="comet", seed=0,
                         shuffle=False, num_epochs=1)
    batch = next(loader)
    params = random_params(COMET)
    got = float(cm.loss(params, batch, MODEL, COMET))

    # by hand: the text slots hold the documents in order (fixed chunks of C); the logits at
    # token k predict token k+1, which counts where labels[k+1] != -100
    logits = np.asarray(cm.text_logits(params, batch, MODEL, COMET))  # [N, B, C, V]
    terms = []
    for j, (doc, m) in enumerate(zip(docs, scored)):
        per_token = logits[:, j].reshape(-1, logits.shape[-1])[: len(doc)]
        logp = np.asarray(jax.nn.log_softmax(per_token[:, :MODEL.real_vocab], axis=-1))
        terms += [-logp[k, doc[k + 1]] for k in range(len(doc) - 1) if m[k + 1]]
    assert len(terms) == sum(int(m[1:].sum()) for m in scored) > 0
    np.testing.assert_allclose(got, np.mean(terms), rtol=1e-5)
