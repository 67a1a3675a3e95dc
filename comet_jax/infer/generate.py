"""Text generation: prefill a batch of prompts, then decode (greedy or temperature/top-p).

    gen = Generator(params, model, comet)                  # mode="comet" or "full"
    out = gen.generate(prompts, Sampling(max_new_tokens=8))
    out.tokens[i]                                          # generated ids of prompt i

CoMeT mode keeps constant state whatever the prompt length (docs/design.md §1.5, see
comet_jax.model.decode): closed chunks are prefilled in blocks of `block_chunks` chunks
(then single chunks for the tail), so there are exactly two compiled prefill functions per
(chunk size, batch), however long the prompts. Full mode (the baseline) keeps a KV cache
over the whole prompt and continuation, its length rounded up to a multiple of `full_block`.

Decoding is one jit-compiled `lax.while_loop` per (batch, max_new_tokens); it stops early
when every row has produced a stop token.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from comet_jax.config import MODES, CometConfig, ModelConfig
from comet_jax.model import backbone, decode
from comet_jax.model.comet import stacked_memory



@dataclass(frozen=True)
class Sampling:
    """max_new_tokens: most tokens generated per prompt; temperature 0 is greedy; top_p
    keeps the smallest set of tokens whose probability reaches top_p; stop_tokens end a row
    (the stop token is included in the output)."""

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    stop_tokens: tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Output:
    tokens: list[np.ndarray]  # generated ids per prompt (stop token included)
    logits: np.ndarray | None  # [B, max_new_tokens, V] logits each token was chosen from (record=True)


def sample(logits: jnp.ndarray, key: jax.Array, temperature: jnp.ndarray, top_p: jnp.ndarray) -> jnp.ndarray:
    """Token ids [B] from logits [B, V]: argmax when temperature == 0, else nucleus sampling."""
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits / jnp.maximum(temperature, 1e-6)
    order = jnp.argsort(-scaled, axis=-1)
    sorted_logits = jnp.take_along_axis(scaled, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p  # the most likely token is always kept
    choice = jax.random.categorical(key, jnp.where(keep, sorted_logits, -jnp.inf), axis=-1)
    sampled = jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
    return jnp.where(temperature > 0, sampled, greedy)


@partial(jax.jit, static_argnames=("model", "comet", "mode", "official", "max_new", "record"))
def decode_loop(params, state, logits, active, key, temperature, top_p, stop_ids, forced, *, model: ModelConfig,
                comet: CometConfig, mode: str, official: bool, max_new: int, record: bool):
    """Sample (or take `forced` [B, max_new]) and feed up to max_new tokens per row.
    Returns (tokens [B, max_new], lengths [B], logits record or None, final state)."""
    b, v = logits.shape

    def feed(s, tok, act):
        if mode == "comet":
            return decode.comet_feed(params, s, tok, act, model, comet, official)
        return decode.full_feed(params, s, tok, act, model)

    def cond(c):
        return (c["i"] < max_new) & jnp.any(~c["done"])

    def body(c):
        i = c["i"]
        key, sub = jax.random.split(c["key"])
        tok = sample(c["logits"], sub, temperature, top_p) if forced is None else forced[:, i]
        tok = jnp.where(c["done"], 0, tok)
        out = c["out"].at[:, i].set(tok)
        rec = c["rec"].at[:, i].set(c["logits"]) if record else c["rec"]
        lengths = c["lengths"] + (~c["done"]).astype(jnp.int32)
        done = c["done"] | jnp.isin(tok, stop_ids) | (i + 1 >= max_new)
        s, new_logits = feed(c["state"], tok, ~done)
        return dict(i=i + 1, state=s, logits=new_logits, out=out, rec=rec, done=done, key=key, lengths=lengths)

    c0 = dict(i=jnp.int32(0), state=state, logits=logits, out=jnp.zeros((b, max_new), jnp.int32),
              rec=jnp.zeros((b, max_new, v), jnp.float32) if record else jnp.zeros((), jnp.float32),
              done=~active, key=key, lengths=jnp.zeros((b,), jnp.int32))
    c = jax.lax.while_loop(cond, body, c0)
    return c["out"], c["lengths"], c["rec"] if record else None, c["state"]


@partial(jax.jit, static_argnames=("model",))
def _full_logits(params, last, model: ModelConfig):
    return decode.logits_of(params, last, model)


def full_cache_size(prompt_len: int, extra: int, block: int) -> int:
    """Slots of the full-mode KV cache: prompt + room for generated tokens, rounded up to a
    whole prefill block (one compile per distinct size)."""
    return -(-(prompt_len + extra) // block) * block


class Generator:
    """Prefill and decode for one model. mode: "comet" (constant memory) or "full" (the
    plain backbone with a KV cache over everything, the baseline). official: reproduce the
    official generation code (docs/design.md §1.7): its chunk layout (no temp beacon after the
    final group of any chunk) and its decoder's beacon rule (a temp beacon after each text
    token, or right after the prompt, that makes the open chunk's placeholders plus text a
    multiple of the stride); the two agree token for token while the continuation stays in the
    prompt's last chunk."""

    def __init__(self, params: dict, model: ModelConfig, comet: CometConfig | None = None, mode: str = "comet",
                 block_chunks: int = 8, full_block: int = 256, official: bool = False):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "comet" and comet is None:
            raise ValueError("comet mode needs a CometConfig")
        if block_chunks < 1 or full_block < 1:
            raise ValueError("block_chunks and full_block must be >= 1")
        self.params = backbone.cast_params(params, model.dtype)
        self.model, self.comet, self.mode, self.official = model, comet, mode, official
        self.block_chunks, self.full_block = block_chunks, full_block

    # ---------------------------------------------------------------- prefill
    def prefill(self, prompts: Sequence[np.ndarray], extra: int = 0,
                progress: Callable[[int], None] | None = None):
        """(state, next-token logits [B, V]) after the prompts; `extra` is the room the full-mode
        cache leaves for generated tokens; progress(n) is called with prompt tokens consumed."""
        prompts = [np.asarray(p, np.int32) for p in prompts]
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        if self.mode == "comet":
            return self._prefill_comet(prompts, progress)
        return self._prefill_full(prompts, extra, progress)

    def _prefill_comet(self, prompts, progress):
        model, comet, c = self.model, self.comet, self.comet.chunk_size
        b = len(prompts)
        n_closed = np.array([(len(p) - 1) // c for p in prompts], np.int32)
        mems = stacked_memory(b, model, comet)
        start, total = 0, int(n_closed.max())
        while start < total:
            k = self.block_chunks if total - start >= self.block_chunks else 1
            block = np.zeros((k, b, c), np.int32)
            for r, p in enumerate(prompts):
                hi = min(int(n_closed[r]), start + k)
                if hi > start:
                    block[: hi - start, r] = p[start * c: hi * c].reshape(hi - start, c)
            mems = decode.prefill_closed(self.params, mems, jnp.asarray(block), jnp.int32(start),
                                         jnp.asarray(n_closed), model, comet, self.official)
            start += k
            if progress is not None:
                progress(k * c * b)
        text = np.zeros((b, c), np.int32)
        n_text = np.zeros((b,), np.int32)
        for r, p in enumerate(prompts):
            tail = p[int(n_closed[r]) * c:]
            text[r, : len(tail)], n_text[r] = tail, len(tail)
        return decode.open_prompt(self.params, mems, jnp.asarray(text), jnp.asarray(n_text),
                                  jnp.asarray(n_closed == 0), model, comet, self.official)

    def _prefill_full(self, prompts, extra, progress):
        b, blk = len(prompts), self.full_block
        lengths = np.array([len(p) for p in prompts], np.int32)
        size = full_cache_size(int(lengths.max()), extra, blk)
        state = {"cache": decode.empty_cache(b, size, self.model), "length": jnp.asarray(lengths),
                 "last": jnp.zeros((b, self.model.hidden_size), jnp.dtype(self.model.dtype))}
        t = -(-int(lengths.max()) // blk) * blk
        tokens = np.zeros((b, t), np.int32)
        for r, p in enumerate(prompts):
            tokens[r, : len(p)] = p
        state = decode.full_prefill(self.params, state, jnp.asarray(tokens), self.model, block=blk)
        if progress is not None:
            progress(t * b)
        return state, _full_logits(self.params, state["last"], self.model)

    # ---------------------------------------------------------------- generate
    def generate(self, prompts: Sequence[np.ndarray], sampling: Sampling = Sampling(),
                 forced: np.ndarray | None = None, record: bool = False, batch_size: int | None = None,
                 progress: Callable[[int], None] | None = None) -> Output:
        """Generate for each prompt. forced [B, max_new_tokens]: feed these tokens instead of
        sampling (teacher forcing; with record=True the logits at each step come back).
        batch_size pads the batch with dummy rows to a fixed size (one compile for any count)."""
        n = len(prompts)
        b = max(n, batch_size or n)
        rows = list(prompts) + [np.zeros(1, np.int32)] * (b - n)
        state, logits = self.prefill(rows, extra=sampling.max_new_tokens, progress=progress)
        active = jnp.asarray(np.arange(b) < n)
        stop = jnp.asarray(list(sampling.stop_tokens) or [-1], jnp.int32)
        if forced is not None:
            forced = np.asarray(forced, np.int32)
            if forced.shape != (n, sampling.max_new_tokens):
                raise ValueError(f"forced must be [{n}, {sampling.max_new_tokens}], got {forced.shape}")
            forced = jnp.asarray(np.concatenate([forced, np.zeros((b - n, forced.shape[1]), np.int32)]))
        out, lengths, rec, _ = decode_loop(
            self.params, state, logits, active, jax.random.key(sampling.seed), jnp.float32(sampling.temperature),
            jnp.float32(sampling.top_p), stop, forced, model=self.model, comet=self.comet, mode=self.mode,
            official=self.official, max_new=sampling.max_new_tokens, record=record)
        out, lengths = np.asarray(out), np.asarray(lengths)
        return Output(tokens=[out[i, : lengths[i]] for i in range(n)],
                      logits=None if rec is None else np.asarray(rec)[:n])
