"""comet-generate --official-layout against the official CoMeT code's own greedy generation.

tests/fixtures/official_generation/<name>/ holds a tiny checkpoint written by the official
PyTorch code (`MemQwen3ForCausalLM.save_pretrained`, random seeded weights) and, in
expected.json, what its generation path (`Gentransform` + `GenBatchCollator`, then
`model.generate`, greedy, float32) emitted and fed for prompts of 1, 2 and 5 chunks whose
continuations stay inside the prompt's last chunk. scripts/official/make_generation_fixtures.py
made them; it needs torch and the official code, so it is not run here. This test needs neither:
it converts the checkpoints with our converter and requires

- the same greedy tokens: comet-generate's continuation equals the official output without
  the temp beacons the official decoder forced into it, up to the first CoMeT id the official
  model chose itself;
- the same tokens fed in the same order: the open chunk of our decode state, in slot order,
  equals what the official decoder fed for its last chunk (the prompt's last chunk, then one
  token per decoding step); positions are consecutive in both, so the positions agree too.
"""

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comet_jax import build, checkpoint
from comet_jax.convert.hf_import import convert
from comet_jax.evals import generate as eval_generate
from comet_jax.infer.generate import Generator, decode_loop

FIXTURES = Path(__file__).parent / "fixtures" / "official_generation"
NAMES = ("c32_s8_g4_b8", "c24_s5_g3_b6")


def fixture(name):
    return json.loads((FIXTURES / name / "expected.json").read_text())


@pytest.mark.parametrize("name", NAMES)
def test_fixtures_are_informative(name):
    """The fixtures exercise what they should: every chunk count, a beacon right after the
    prompt, long continuations, greedy choices far from ties, consecutive official positions."""
    exp = fixture(name)
    cfg = json.loads((FIXTURES / name / "config.json").read_text())
    c, stride = cfg["chunk_size"], cfg["temp_beacon_stride"]
    counts = {len(case["chunk_sizes"]) for case in exp["cases"]}
    assert counts == {1, 2, 5}
    assert any(case["forced"][1] for case in exp["cases"])  # a beacon fed right after the prompt
    for case in exp["cases"]:
        n = len(case["prompt"])
        assert (n - 1) % c + 1 + exp["max_new_tokens"] <= c  # continuation inside the last chunk
        assert len(case["text"]) >= 9 and min(case["margins"]) > 1e-3
        last = case["chunk_sizes"][-1]
        assert case["prompt_fed"]["positions"][-last:] == list(range(last))
        assert [f["positions"] for f in case["fed"]] == [[last + i] for i in range(len(case["fed"]))]
        assert sum(case["forced"]) >= 1 and stride > 0


def converted(name, tmp_path):
    dst = tmp_path / name
    convert(FIXTURES / name, dst, log=lambda m: None)
    return dst


@pytest.mark.parametrize("name", NAMES)
def test_greedy_tokens_and_fed_tokens_equal_the_official_ones(name, tmp_path, capsys):
    exp = fixture(name)
    cases, new = exp["cases"], exp["max_new_tokens"]
    ckpt = converted(name, tmp_path)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"input_ids": c["prompt"]}) + "\n" for c in cases))
    out = io.StringIO()
    with redirect_stdout(out):
        rc = eval_generate.main(["--checkpoint", str(ckpt), "--prompts", str(prompts), "--max-new-tokens", str(new),
                                 "--official-layout", "--batch-size", str(len(cases))])
    assert rc == 0, capsys.readouterr().err
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == len(cases)
    for case, line in zip(cases, lines):
        want = case["text"]
        assert line["tokens"][: len(want)] == want, (len(case["prompt"]), line["tokens"], want)

    # step by step: the same Generator as the command (compiled functions are reused)
    model, comet, _ = build.from_checkpoint(ckpt, dtype="float32", attention="auto")
    gen = Generator(checkpoint.load_params(ckpt), model, comet, official=True)
    b = len(cases)
    state, logits = gen.prefill([np.asarray(c["prompt"], np.int32) for c in cases], extra=new)
    _, _, _, state = decode_loop(
        gen.params, state, logits, jnp.ones(b, bool), jax.random.key(0), jnp.float32(0), jnp.float32(1),
        jnp.asarray([-1]), None, model=model, comet=comet, mode="comet", official=True, max_new=new, record=False)
    valid, tokens = np.asarray(state["cache"]["valid"]), np.asarray(state["cache"]["tokens"])
    beacon = comet.temp_beacon_id
    for r, case in enumerate(cases):
        last = case["chunk_sizes"][-1]
        prompt_part = case["prompt_fed"]["tokens"][-last:]
        theirs = prompt_part + [f["tokens"][0] for f in case["fed"]]
        fed = tokens[r][valid[r]].tolist()
        # up to the (m)th generated text token, m = the text tokens both surely fed (the last
        # text token a run chose may not have been fed); inserted beacons in between included
        m = len(case["text"]) - 1

        def cut(seq, inserted):
            k = 0
            for i in range(last, len(seq)):
                k += not inserted(i)
                if k == m:
                    return seq[: i + 1]
            raise AssertionError(f"fewer than {m} text tokens fed")

        forced_fed = case["forced"][1:]  # fed step j inserted a beacon iff the token chosen then was forced
        theirs = cut(theirs, lambda i: forced_fed[i - last])
        ours = cut(fed, lambda i: fed[i] == beacon)  # no CoMeT id among the first m text tokens
        assert ours == theirs, (len(case["prompt"]), ours[last - 4:], theirs[last - 4:])
