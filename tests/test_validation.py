"""Validation's chunk losses: the loss of each sequence's first chunk and of the chunk holding
its last prediction, in comet and in full mode, against sums computed by hand from the
model's teacher-forced logits (the prediction made at token k falls in chunk k // C)."""

import json

import jax
import numpy as np
import pytest

from comet_jax.data.pipeline import JsonlSource, make_loader
from comet_jax.model import backbone, comet as cm
from comet_jax.train.train_step import COMET_KEYS, FULL_KEYS
from comet_jax.train.validation import describe, loss_sums
from test_comet import COMET, MODEL, random_params

C = COMET.chunk_size


def by_hand(logits_per_doc, docs, scored):
    """[total, count, first, n, last, n] from per-document logits [len, V] (row k predicts k+1)."""
    out = np.zeros(6)
    for logits, doc, m in zip(logits_per_doc, docs, scored):
        logp = np.asarray(jax.nn.log_softmax(logits[:, :MODEL.real_vocab], axis=-1))
        last_chunk = (len(doc) - 2) // C
        for k in range(len(doc) - 1):
            if not m[k + 1]:
                continue
            nll = -logp[k, doc[k + 1]]
            out[:2] += nll, 1
            if k // C == 0:
                out[2:4] += nll, 1
            if k // C == last_chunk:
                out[4:6] += nll, 1
    return out


@pytest.mark.parametrize("mode", ["comet", "full"])
def test_first_and_last_chunk_losses_equal_a_hand_computation(tmp_path, mode):
    rng = np.random.default_rng(3)
    docs = [rng.integers(1, 50, n) for n in (23, 9, 15)]  # 4, 2 and 3 chunks of 7
    scored = [rng.random(len(d)) < 0.7 for d in docs]
    path = tmp_path / "held.jsonl"
    path.write_text("".join(json.dumps({"input_ids": d.tolist(), "labels": np.where(m, d, -100).tolist()}) + "\n"
                            for d, m in zip(docs, scored)))
    batch = next(make_loader(JsonlSource(path), seq_len=32, batch_size=3, comet_cfg=COMET, mode=mode, seed=0,
                             shuffle=False, num_epochs=1))
    params = random_params(COMET)
    keys = COMET_KEYS if mode == "comet" else FULL_KEYS
    got = np.asarray(loss_sums(params, {k: batch[k] for k in keys}, mode=mode, model=MODEL,
                               comet=COMET, schedule="layer_major", remat=False))
    if mode == "comet":
        logits = np.asarray(cm.text_logits(params, batch, MODEL, COMET))  # [N, B, C, V]
        per_doc = [logits[:, j].reshape(-1, logits.shape[-1])[: len(d)] for j, d in enumerate(docs)]
    else:
        logits = np.asarray(backbone.full_logits(params, batch["tokens"], batch["lengths"], MODEL))  # [B, T, V]
        per_doc = [logits[j, : len(d)] for j, d in enumerate(docs)]
    want = by_hand(per_doc, docs, scored)
    np.testing.assert_array_equal(got[1::2], want[1::2])  # the counts
    np.testing.assert_allclose(got[0::2], want[0::2], rtol=1e-5)
    assert want[3] and want[5] and want[3] != want[5]


def test_the_log_line_names_the_chunk_losses_and_passkey_lengths():
    line = describe({"eval_loss": 2.0, "eval_loss_first_chunk": 3.0, "eval_loss_last_chunk": 1.5,
                     "eval_passkey_512": 0.75}, batches=2)
    assert line == "eval_loss 2.0000, first chunk 3.0000 -> last chunk 1.5000, passkey@512 0.75 (2 held-out batches)"


def test_held_out_files_are_read_in_the_training_format_or_by_name():
    from comet_jax.data.files import held_out_source

    assert held_out_source("jsonl", "v.array_record") == "jsonl"
    assert held_out_source("arrayrecord", "v.jsonl") == "arrayrecord"
    assert held_out_source("passkey", "held/v.jsonl") == "jsonl"
    assert held_out_source("passkey", "a.array_record-00000-of-00002,b.arrayrecord") == "arrayrecord"
