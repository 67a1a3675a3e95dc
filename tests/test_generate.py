"""Generation: prefill + decoding equals teacher forcing over the generation layout, beacons
are fed where the layout puts them, no recompiles as prompts grow, sampling, full mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comet_jax import chunking, layout
from comet_jax.config import CometConfig
from comet_jax.infer.generate import Generator, Sampling, decode_loop, sample
from comet_jax.layout import Slots
from comet_jax.model import backbone, decode
from comet_jax.model import comet as cm
from numerics import rel_err
from test_comet import COMET, MODEL, random_params

CONFIGS = {
    "global+temp": COMET,  # C 7, stride 3: a partial final group
    "global_only": CometConfig(chunk_size=7, global_size=2, placeholder_id=50, global_beacon_ids=(52, 53)),
    "temp_only": CometConfig(chunk_size=6, stride=2, budget=5, placeholder_id=50, temp_beacon_id=51),
}
PROMPT_LENGTHS = (5, 7, 8, 23)  # one open chunk; exactly one full chunk; one closed + 1; three closed + 2
NEW = 12


def prompts_and_forced(seed=0):
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, 50, n).astype(np.int32) for n in PROMPT_LENGTHS]
    return prompts, rng.integers(0, 50, (len(prompts), NEW)).astype(np.int32)


def generation_layout(seqs, comet):
    plans = [chunking.fixed(len(s), comet.chunk_size) for s in seqs]
    return layout.build(seqs, plans, comet, open_last=True)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_decoding_equals_teacher_forcing(name):
    comet = CONFIGS[name]
    params = random_params(comet)
    prompts, forced = prompts_and_forced()
    gen = Generator(params, MODEL, comet, block_chunks=2)
    out = gen.generate(prompts, Sampling(max_new_tokens=NEW), forced=forced, record=True)
    assert [len(t) for t in out.tokens] == [NEW] * len(prompts)
    np.testing.assert_array_equal(np.stack(out.tokens), forced)
    # Teacher forcing over prompt + all but the last forced token, laid out as generation lays it out.
    seqs = [np.concatenate([p, f[:-1]]) for p, f in zip(prompts, forced)]
    lay = generation_layout(seqs, comet)
    logits = np.asarray(cm.text_logits(params, lay.as_dict(), MODEL, comet))  # [N, B, C, V]
    for r, p in enumerate(prompts):
        ref = np.zeros((len(seqs[r]), logits.shape[-1]), np.float32)
        where = lay.raw_index[:, r] >= 0
        ref[lay.raw_index[:, r][where]] = logits[:, r][where]
        want = ref[len(p) - 1:]  # the logits each generated token was chosen from
        got = out.logits[r]
        live = np.isfinite(want)
        assert np.array_equal(live, np.isfinite(got))  # padded vocabulary rows masked alike
        assert rel_err(got[live], want[live]) < 1e-5, (name, r)


def test_beacons_fed_where_the_layout_puts_them():
    params = random_params(COMET)
    prompts, forced = prompts_and_forced(1)
    gen = Generator(params, MODEL, COMET)
    for new in (1, 3, NEW):  # open chunk ends after several different group phases
        state, logits = gen.prefill(prompts, extra=new)
        b = len(prompts)
        _, _, _, state = decode_loop(
            gen.params, state, logits, jnp.ones(b, bool), jax.random.key(0), jnp.float32(0), jnp.float32(1),
            jnp.asarray([-1]), jnp.asarray(forced[:, :new]), model=MODEL, comet=COMET, mode="comet",
            official=False, max_new=new, record=False)
        # the last forced token is chosen but never fed
        seqs = [np.concatenate([p, f[: new - 1]]) for p, f in zip(prompts, forced)]
        lay = generation_layout(seqs, COMET)
        last = np.array([len(chunking.fixed(len(s), COMET.chunk_size)) - 1 for s in seqs])
        want_valid = lay.valid[last, np.arange(b)]
        want_tokens = lay.tokens[last, np.arange(b)]
        np.testing.assert_array_equal(np.asarray(state["cache"]["valid"]), want_valid)
        sl = Slots.of(COMET)
        got_text = np.asarray(state["text"])
        for r in range(b):
            n = int(state["n_text"][r])
            np.testing.assert_array_equal(got_text[r, :n], want_tokens[r, sl.text_slots[:n]])
        # temp beacons only after complete groups; never global beacons in the open chunk
        beacon_valid = want_valid[:, sl.beacon_slots]
        np.testing.assert_array_equal(beacon_valid.sum(1), np.asarray(state["n_text"]) // COMET.stride)
        assert not want_valid[:, sl.beacons_start:].any()


def test_no_recompilation_as_prompts_grow():
    params = random_params(COMET)
    gen = Generator(params, MODEL, COMET, block_chunks=4)
    rng = np.random.default_rng(0)
    fns = (decode.prefill_closed, decode.open_prompt, decode_loop)

    def run(n):
        gen.generate([rng.integers(0, 50, n)] * 2, Sampling(max_new_tokens=9))

    run(7 * 5 + 3)  # one block of 4 chunks and one single chunk: every function compiled once
    sizes = [f._cache_size() for f in fns]
    for n in (60, 200, 7 * 41):
        run(n)
    assert [f._cache_size() for f in fns] == sizes


def test_full_mode_equals_backbone_logits():
    params = random_params(CometConfig())
    prompts, forced = prompts_and_forced(2)
    gen = Generator(params, MODEL, mode="full", full_block=8)
    out = gen.generate(prompts, Sampling(max_new_tokens=NEW), forced=forced, record=True)
    for r, p in enumerate(prompts):
        seq = np.concatenate([p, forced[r, :-1]])
        ref = np.asarray(backbone.full_logits(params, jnp.asarray(seq[None]), jnp.asarray([len(seq)]), MODEL))[0]
        want, got = ref[len(p) - 1:], out.logits[r]
        live = np.isfinite(want)
        assert rel_err(got[live], want[live]) < 1e-5


def test_greedy_stops_and_sampling():
    params = random_params(COMET)
    prompts, _ = prompts_and_forced(3)
    gen = Generator(params, MODEL, COMET)
    greedy = gen.generate(prompts, Sampling(max_new_tokens=NEW), record=True)
    for r in range(len(prompts)):  # greedy = argmax of the logits it saw
        np.testing.assert_array_equal(greedy.tokens[r], greedy.logits[r].argmax(-1))
        assert greedy.tokens[r].max() < MODEL.real_vocab
    stop = int(greedy.tokens[0][2])
    stopped = gen.generate(prompts, Sampling(max_new_tokens=NEW, stop_tokens=(stop,)))
    first_stop = list(greedy.tokens[0]).index(stop)
    np.testing.assert_array_equal(stopped.tokens[0], greedy.tokens[0][: first_stop + 1])
    # padded batch rows change nothing
    padded = gen.generate(prompts, Sampling(max_new_tokens=NEW), batch_size=8)
    for a, b in zip(padded.tokens, greedy.tokens):
        np.testing.assert_array_equal(a, b)
    # temperature sampling: reproducible per seed, different across seeds
    s0 = gen.generate(prompts, Sampling(max_new_tokens=NEW, temperature=1.0, seed=0))
    s0b = gen.generate(prompts, Sampling(max_new_tokens=NEW, temperature=1.0, seed=0))
    s1 = gen.generate(prompts, Sampling(max_new_tokens=NEW, temperature=1.0, seed=1))
    assert all(np.array_equal(a, b) for a, b in zip(s0.tokens, s0b.tokens))
    assert not all(np.array_equal(a, b) for a, b in zip(s0.tokens, s1.tokens))


def test_top_p_keeps_the_nucleus():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 4000))
    keys = jax.random.key(0)
    toks = np.asarray(sample(logits, keys, jnp.float32(1.0), jnp.float32(0.7)))
    assert set(np.unique(toks)) == {0, 1}  # 0.5 + 0.3 >= 0.7: the rest is cut
    assert abs((toks == 0).mean() - 0.5 / 0.8) < 0.03
    assert np.all(np.asarray(sample(logits, keys, jnp.float32(0.0), jnp.float32(0.1))) == 0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_new_tokens"):
        Sampling(max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        Sampling(top_p=0)
    params = random_params(COMET)
    with pytest.raises(ValueError, match="mode"):
        Generator(params, MODEL, COMET, mode="fast")
    with pytest.raises(ValueError, match="at least one token"):
        Generator(params, MODEL, COMET).generate([np.zeros(0, np.int32)])


# ------------------------------------------------------------------ the official layout

def test_official_layout_by_hand():
    """C 7, stride 3, G 3, budget 4: the slots of one chunk written out. Slots: 3 global
    placeholders, 4 temp placeholders, 7 text slots each followed (after every third) by a
    beacon slot, 3 global beacons; P = placeholder, T = temp beacon, B = global. An open chunk
    also gets the beacon the official decoder inserts right after the prompt: when its counter
    (valid placeholders + text, §1.7) is a multiple of the stride; it takes the slot after the
    last text token, which the static layout keeps for text or for another beacon."""
    sl = Slots.of(COMET)
    text = np.arange(1, 8, dtype=np.int32)[None]  # tokens 1..7
    P, T = COMET.placeholder_id, COMET.temp_beacon_id
    cases = {  # (n_text, closed, first, valid temp placeholders) -> the valid slots' tokens in order
        (7, True, False, 4): [P] * 7 + [1, 2, 3, T, 4, 5, 6, T, 7] + [52, 53, 54],  # training: also a T after 7
        (6, True, False, 4): [P] * 7 + [1, 2, 3, T, 4, 5, 6] + [52, 53, 54],  # complete final group: no T
        (3, True, False, 4): [P] * 7 + [1, 2, 3] + [52, 53, 54],
        (1, True, False, 4): [P] * 7 + [1] + [52, 53, 54],
        (4, False, False, 4): [P] * 7 + [1, 2, 3, T, 4],  # open: no global beacons; 7 + 4 = 11
        (5, False, False, 4): [P] * 7 + [1, 2, 3, T, 4, 5, T],  # 7 + 5 = 12: T after 5, in text slot 6's place
        (6, False, False, 4): [P] * 7 + [1, 2, 3, T, 4, 5, 6],  # 7 + 6 = 13: none (ours would add one)
        (6, False, True, 0): [1, 2, 3, T, 4, 5, 6, T],  # first chunk, empty queue: 0 + 6
        (2, False, True, 0): [1, 2],
        (5, False, False, 1): [P] * 4 + [1, 2, 3, T, 4, 5, T],  # 3 + 1 + 5 = 9: T after 5
    }
    for (n, closed, first, m), want in cases.items():
        q_valid = jnp.asarray(np.arange(COMET.budget)[None] >= COMET.budget - m)
        lay = decode.chunk_layout(jnp.asarray(text), jnp.asarray([n]), jnp.asarray([first]), q_valid, closed,
                                  jnp.asarray([True]), COMET, official=True)
        valid = np.asarray(lay["valid"][0])
        assert list(np.asarray(lay["tokens"][0])[valid]) == want, (n, closed, first, m)
        np.testing.assert_array_equal(np.asarray(lay["positions"][0])[valid], np.arange(len(want)))
        assert valid.shape == (sl.size,)


def official_reference(params, prompt, fed, comet):
    """The official decoder written with the plain reference's pieces (tests/reference_comet.py),
    token by token, with our closing of a full open chunk (docs/design.md §1.7): the logits
    that each token after the prompt is chosen from, when `fed` is what was fed after it.

    A chunk that another chunk follows is run closed, for the memories only: placeholders,
    its text with a temp beacon after every group but the last, its global beacons. A chunk
    that holds the last prompt token or generated ones is run open, for the logits:
    placeholders (count p), its text, a temp beacon after each complete group of the prompt's
    part but its last, and from the last prompt token on a temp beacon after each text token
    that makes p + (text tokens so far) a multiple of the stride; no global beacons."""
    import reference_comet as ref
    from test_comet_reference import ref_cfgs

    cfg, _ = ref_cfgs(MODEL, comet)
    scfg = ref._Static(cfg)
    c, stride, g, budget = comet.chunk_size, comet.stride, comet.global_size, comet.budget
    seq, n = [int(t) for t in prompt] + [int(t) for t in fed], len(prompt)
    layers = MODEL.num_layers
    glob_o, glob_s = [None] * layers, [None] * layers
    queue = [jnp.zeros((0, MODEL.hidden_size), jnp.float32) for _ in range(layers)]
    pushed, logits = 0, []
    for i, start in enumerate(range(0, len(seq), c)):
        text = seq[start:start + c]
        m = min(budget, pushed)
        p = (g if i else 0) + m
        n0 = min(max(n - start, 0), len(text))  # prompt tokens in this chunk
        for closed in (False, True):
            if closed and start + c >= len(seq) or not closed and start + len(text) < n:
                continue
            lay = {"tokens": [], "global_ph": [], "temp_ph": [], "text": [], "temp_beacon": [], "global_beacon": []}

            def put(kind, tok):
                lay[kind].append(len(lay["tokens"]))
                lay["tokens"].append(int(tok))

            for _ in range(g if i else 0):
                put("global_ph", comet.placeholder_id)
            for _ in range(m):
                put("temp_ph", comet.placeholder_id)
            for j, tok in enumerate(text):
                put("text", tok)
                k = j + 1
                if closed or k < n0:
                    beacon = k % stride == 0 and k < (len(text) if closed else n0)
                else:
                    beacon = (p + k) % stride == 0
                if beacon:
                    put("temp_beacon", comet.temp_beacon_id)
            if closed:
                for b in comet.global_beacon_ids:
                    put("global_beacon", b)
            # padded at the end to one length, so the reference compiles once (causal: no effect)
            size = Slots.of(comet).size
            h = jnp.asarray(params["embed"])[np.asarray(lay["tokens"] + [0] * (size - len(lay["tokens"])))]
            cos, sin = ref.rope_cos_sin(cfg, size)
            for l in range(layers):
                lp = ref.layer_params(params, l)
                if closed:
                    h, glob_o[l], glob_s[l], queue[l] = ref.comet_layer_step(
                        lp, cfg, {"global_size": g, "stride": stride, "budget": budget}, lay, h, glob_o[l],
                        glob_s[l], queue[l])
                    continue
                if lay["global_ph"]:
                    h = h.at[np.asarray(lay["global_ph"])].set(glob_o[l])
                if lay["temp_ph"]:
                    h = h.at[np.asarray(lay["temp_ph"])].set(queue[l])
                h = ref._jit_layer(lp, scfg, h, cos, sin)
            if closed:
                pushed += len(lay["temp_beacon"])
            else:
                keep = [t for j, t in enumerate(lay["text"]) if start + j >= n - 1]
                logits.append(np.asarray(ref._jit_logits(ref._head_params(params), scfg, h[np.asarray(keep)])))
    return np.concatenate(logits)


def test_official_decoding_equals_the_official_decoder():
    """Decoding with official=True equals the official decoder written out by hand (its beacon
    counter includes the open chunk's placeholders, so beacons land where the static layout
    has none), across prompts of 1..4 chunks, full and partial temp queues and closed chunks."""
    params = random_params(COMET)
    prompts, forced = prompts_and_forced(4)
    gen = Generator(params, MODEL, COMET, block_chunks=2, official=True)
    out = gen.generate(prompts, Sampling(max_new_tokens=NEW), forced=forced, record=True)
    ours = Generator(params, MODEL, COMET, block_chunks=2).generate(prompts, Sampling(max_new_tokens=NEW),
                                                                     forced=forced, record=True)
    differs = 0
    for r, p in enumerate(prompts):
        want, got = official_reference(params, p, forced[r, :-1], COMET), out.logits[r]
        live = np.isfinite(want)
        assert np.array_equal(live, np.isfinite(got))
        assert rel_err(got[live], want[live]) < 1e-5, r
        differs += rel_err(ours.logits[r][live], got[live]) > 1e-3
    assert differs  # the two layouts give different numbers
