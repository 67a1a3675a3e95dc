"""Resuming a training run after a fault, in-process (the runs of `python -m train` are in
test_faults_train.py): the metrics of the steps redone after a crash are written once, the
settings that changed are named, a diverged run calls no checkpoint good, and a checkpoint
with a missing Orbax file is moved aside in one line."""

from __future__ import annotations

import json
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest

from comet_jax.train.metrics import MetricsWriter
from comet_jax.train.train_checkpoint import NoReadableCheckpoint, TrainCheckpointer, abstract_like
from comet_jax.train.train_config import load_config
from comet_jax.train.trainer import Trainer, changed_settings

IDENTITY = {"model.hidden_size": 4}


def state(value: float) -> dict:
    rng = np.random.default_rng(int(value * 100))
    return {"params": {"w": jnp.asarray(rng.standard_normal((4, 4)), jnp.float32) * value},
            "step": jnp.asarray(int(value), jnp.int32)}


def saved(tmp_path, steps=(2, 4)) -> TrainCheckpointer:
    ckpt = TrainCheckpointer(tmp_path / "checkpoints", async_save=False)
    for s in steps:
        ckpt.save(s, state(s), b"data", {"identity": IDENTITY}, force=True)
    return ckpt


def metric_steps(path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_a_resumed_run_writes_each_step_once_in_the_metrics(tmp_path):
    # steps 1..6 were logged, the newest checkpoint is step 4, then kill -9 cut a line short
    first = MetricsWriter(tmp_path, tensorboard=False)
    for step in range(1, 7):
        first.write(step, {"loss": 1.0 / step})
    first.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "lo')
    resumed = MetricsWriter(tmp_path, tensorboard=True, resume_step=4)
    assert metric_steps(tmp_path / "metrics.jsonl") == [1, 2, 3, 4]
    for step in (5, 6, 7):
        resumed.write(step, {"loss": 2.0})
    resumed.close()
    assert metric_steps(tmp_path / "metrics.jsonl") == [1, 2, 3, 4, 5, 6, 7]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    # a fresh start (no resume step) appends, as before
    MetricsWriter(tmp_path, tensorboard=False).close()
    assert metric_steps(tmp_path / "metrics.jsonl") == [1, 2, 3, 4, 5, 6, 7]


def test_changed_settings_are_named_old_to_new():
    saved_cfg = {"optim.lr": 1e-3, "train.batch_size": 4, "comet.chunk_size": 64, "train.steps": 10,
                 "run.dir": "/a", "distributed.coordinator": ""}
    now = {**saved_cfg, "optim.lr": 3e-4, "train.batch_size": 8, "comet.chunk_size": 32, "run.dir": "/b",
           "distributed.coordinator": "h:1", "logging.jsonl": True}  # a key the checkpoint lacks: not named
    assert changed_settings(saved_cfg, now) == ["optim.lr 0.001 -> 0.0003", "train.batch_size 4 -> 8",
                                                "comet.chunk_size 64 -> 32"]
    assert changed_settings(saved_cfg, saved_cfg) == []


def test_a_non_finite_loss_calls_no_checkpoint_good(tmp_path):
    # optim.lr=1e30: the states saved before the NaN are finite but already exploded; the
    # message must not send the user back to one of them as "good"
    ckpt = saved(tmp_path)
    fake = SimpleNamespace(cfg=load_config(None, ["checkpoint.keep=3"]), run_dir=tmp_path)
    msg = str(Trainer.non_finite(fake, 5, "loss is nan", 0, False, ckpt))
    assert "\n" not in msg and "good" not in msg, msg
    assert msg.startswith("loss is nan at step 5; stopping") and "step(s) 2, 4" in msg, msg
    assert "optim.lr" in msg and "checkpoint.keep=3" in msg and "corrupt_checkpoints" in msg, msg
    ckpt.close()


def test_a_missing_orbax_metadata_file_is_one_line_and_the_previous_step_is_used(tmp_path):
    ckpt = saved(tmp_path)
    (ckpt.directory / "4" / "state" / "_METADATA").unlink()
    logs: list[str] = []
    step, restored, _, _ = ckpt.restore_latest(abstract_like(state(1.0)), identity=IDENTITY, log=logs.append)
    assert step == 2
    np.testing.assert_array_equal(np.asarray(restored["params"]["w"]), np.asarray(state(2)["params"]["w"]))
    assert len(logs) == 1 and "\n" not in logs[0], logs
    msg = logs[0]
    assert f"moved {ckpt.directory / '4'} to {tmp_path / 'corrupt_checkpoints' / '4'}" in msg, msg
    assert "its file state/_METADATA is missing" in msg and "trying the previous one" in msg, msg
    ckpt.close()
    # the only checkpoint: the run stops, saying how to start over
    alone = saved(tmp_path / "alone", steps=(2,))
    (alone.directory / "2" / "state" / "_METADATA").unlink()
    with pytest.raises(NoReadableCheckpoint, match="restart_if_unreadable=true"):
        alone.restore_latest(abstract_like(state(1.0)), identity=IDENTITY, log=logs.append)
    assert "its file state/_METADATA is missing" in logs[-1]
    alone.close()
