"""FLOP accounting for CoMeT's real layout."""

import pytest

from comet_jax.config import CometConfig, ModelConfig
from comet_jax.train.flops import forward_flops_per_token, real_slots_per_chunk, train_flops_per_token

MODEL = ModelConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                    num_kv_heads=2, head_dim=16)


def test_without_memory_equals_plain_backbone():
    c = CometConfig(chunk_size=128)
    assert real_slots_per_chunk(c) == 128
    assert forward_flops_per_token(MODEL, c) == pytest.approx(forward_flops_per_token(MODEL, None, context=128))
    assert train_flops_per_token(MODEL, c) == 3 * forward_flops_per_token(MODEL, c)


def test_memory_slots_are_counted():
    c = CometConfig(chunk_size=128, global_size=8, stride=8, budget=32, placeholder_id=1, temp_beacon_id=2,
                    global_beacon_ids=tuple(range(3, 11)))
    assert real_slots_per_chunk(c) == 8 + 32 + 128 + 16 + 8
    assert real_slots_per_chunk(c, steady=False) == 8 + 128 + 16 + 8
    plain = forward_flops_per_token(MODEL, CometConfig(chunk_size=128))
    head = 2 * 64 * 1000
    # the layers see 192 slots for 128 tokens; the head only the text tokens
    assert forward_flops_per_token(MODEL, c) - head > 1.5 * (plain - head)
