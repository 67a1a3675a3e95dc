"""The attention switch (`ModelConfig.attention`: auto | xla | splash | cudnn).

Two self-attention patterns run through a kernel; both are causal over one array of slots:

- a CoMeT chunk (docs/design.md §1.2 items 4-5): key slot <= query slot, invalid keys masked;
- full mode: key <= query, keys past a sequence's length masked.

`xla` is `backbone.attend` with the dense boolean mask (the reference). `splash` is the Pallas
TPU kernel with a static causal mask plus segment ids: valid slots are segment 0 and invalid
(or padding) slots segment 1, so a valid query sees exactly the valid keys of its causal
prefix, and no dense mask is built per chunk. An invalid query sees only invalid keys (at
least itself), so no row is empty; its output differs from xla's, but nothing reads it
(design §2: invalid slots are never keys, carry no label and feed no memory). `cudnn` is
`jax.nn.dot_product_attention(implementation="cudnn")`.

Decode steps over a KV cache (`decode.extend`) stay on xla: they attend a few queries to a
cache at dynamic offsets, which a static causal mask cannot express.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from comet_jax.config import ATTENTIONS, ModelConfig

# Splash tiles the slot axis in blocks of at least this many (the TPU lane width); the slot
# axis is padded up to a multiple of it, and the padded slots are invalid.
BLOCK = 128
# Mesh axes a kernel call is split over: the batch (as parallel/sharding.BATCH_AXES) and heads.
BATCH_AXES = ("data", "fsdp")
HEAD_AXIS = "tensor"

Attn = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]


@functools.cache
def _notice(message: str) -> None:
    print(message, file=sys.stderr)


# The platform functions are traced for when it is not the one JAX runs on (compiling for a
# TPU on a CPU host: comet-lower, comet-plan); None = jax.default_backend().
_TARGET: list[str | None] = [None]


def platform() -> str:
    return _TARGET[0] or jax.default_backend()


@contextlib.contextmanager
def target(name: str | None):
    """Trace for platform `name` ("tpu", "cuda", "cpu"): `auto` resolves for it, and splash runs
    compiled (not interpreted) when it is "tpu"."""
    old, _TARGET[0] = _TARGET[0], name
    try:
        yield
    finally:
        _TARGET[0] = old


def resolve(attention: str, dtype: str, backend: str | None = None) -> str:
    """The kernel `attention` means on `backend` (default: JAX's default backend, at trace time)."""
    if attention not in ATTENTIONS:
        raise ValueError(f"model.attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
    if attention != "auto":
        return attention
    backend = backend or platform()
    if backend == "tpu":
        return "splash"
    if backend in ("gpu", "cuda", "rocm"):
        if dtype in ("bfloat16", "float16"):
            return "cudnn"
        _notice(f"attention=auto: cuDNN attention needs bfloat16/float16, the compute dtype is {dtype}; using xla")
    return "xla"


def uses_kernel(model: ModelConfig) -> bool:
    return resolve(model.attention, model.dtype) != "xla"


# ------------------------------------------------------------------------------ dispatch

def chunk_attention(model: ModelConfig, valid: jnp.ndarray) -> Attn | None:
    """(q, k, v) -> [B, S, H*hd] for one CoMeT chunk with slot validity `valid` [B, S]; None
    means xla (the caller passes the dense `comet.chunk_mask`)."""
    kernel = resolve(model.attention, model.dtype)
    if kernel == "xla":
        return None
    if kernel == "splash":
        seg = jnp.where(valid, 0, 1).astype(jnp.int32)
        return lambda q, k, v: splash_causal(q, k, v, seg)
    return lambda q, k, v: _cudnn_chunk(q, k, v, valid)


def full_attention(model: ModelConfig, lengths: jnp.ndarray) -> Attn | None:
    """(q, k, v) -> [B, T, H*hd], causal with keys past `lengths` [B] masked; None means xla
    (the caller keeps `backbone.causal_attend`)."""
    kernel = resolve(model.attention, model.dtype)
    if kernel == "xla":
        return None
    if kernel == "splash":
        def run(q, k, v):
            seg = (jnp.arange(q.shape[1])[None, :] >= lengths[:, None]).astype(jnp.int32)
            return splash_causal(q, k, v, seg)
        return run
    return lambda q, k, v: _cudnn(q, k, v, query_seq_lengths=lengths, key_value_seq_lengths=lengths)


def _cudnn_chunk(q, k, v, valid, implementation: str = "cudnn") -> jnp.ndarray:
    # cuDNN takes a mask only as a full [B, 1, T, S] bias: on a GPU jax rejects [B, 1, 1, S]
    # ("Bias must have same seq length as QKV"), which its xla implementation broadcasts.
    mask = jnp.broadcast_to(valid[:, None, None, :], (q.shape[0], 1, q.shape[1], k.shape[1]))
    return _cudnn(q, k, v, implementation, mask=mask)


def _cudnn(q, k, v, implementation: str = "cudnn", **masks) -> jnp.ndarray:
    """cuDNN's fused attention, causal; `masks` adds a key mask or sequence lengths. Written
    for GPU machines; the same call with implementation="xla" is what the CPU tests check."""
    b, t, h, hd = q.shape
    out = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation, **masks)
    return out.reshape(b, t, h * hd)


# ------------------------------------------------------------------------------ xla, forward only

def blockwise_causal(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, lengths: jnp.ndarray,
                     block: int) -> jnp.ndarray:
    """Causal attention (keys past `lengths` [B] masked) computed block by block with an online
    softmax, visiting only the key blocks at or before each query block: the FLOPs of the causal
    triangle and O(T x block) memory, in plain XLA. q [B, T, H, hd]; k, v [B, T, K, hd]; T a
    multiple of `block`. Returns [B, T, H*hd]. The inner loop has a data-dependent trip count,
    so this is for prefill (no gradient); training uses `backbone.causal_attend`."""
    b, t, h, hd = q.shape
    kv, n = k.shape[2], t // block
    f32 = jnp.promote_types(q.dtype, jnp.float32)
    qb = (q * jnp.asarray(hd ** -0.5, q.dtype)).reshape(b, n, block, kv, h // kv, hd)
    kb, vb = k.reshape(b, n, block, kv, hd), v.reshape(b, n, block, kv, hd)
    rows = jnp.arange(block)

    def query_block(_, i):
        qi = qb[:, i]

        def key_block(j, carry):
            m, l, acc = carry
            s = jnp.einsum("bqkgd,bskd->bkgqs", qi, kb[:, j], preferred_element_type=f32)
            key = j * block + rows
            ok = (key[None, :] <= (i * block + rows)[:, None])[None] & (key[None, None, :] < lengths[:, None, None])
            s = jnp.where(ok[:, None, None], s, -jnp.inf)
            m_new = jnp.maximum(m, s.max(-1))
            m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
            p = jnp.exp(s - m_safe[..., None])
            scale = jnp.exp(jnp.where(jnp.isfinite(m), m - m_safe, -jnp.inf))
            acc = acc * scale[..., None] + jnp.einsum("bkgqs,bskd->bkgqd", p.astype(v.dtype), vb[:, j],
                                                      preferred_element_type=f32)
            return m_new, l * scale + p.sum(-1), acc

        shape = (b, kv, h // kv, block)
        init = (jnp.full(shape, -jnp.inf, f32), jnp.zeros(shape, f32), jnp.zeros((*shape, hd), f32))
        _, l, acc = jax.lax.fori_loop(0, i + 1, key_block, init)
        out = acc / jnp.where(l > 0, l, 1.0)[..., None]  # a query with no valid key (padding) gets 0
        return None, jnp.moveaxis(out, 3, 1).reshape(b, block, h * hd).astype(q.dtype)

    _, out = jax.lax.scan(query_block, None, jnp.arange(n))
    return jnp.moveaxis(out, 0, 1).reshape(b, t, h * hd)


# ------------------------------------------------------------------------------ splash

def _block(n: int) -> int:
    return next(b for b in (512, 256, BLOCK) if n % b == 0)


@functools.cache
def _splash_kernel(heads: int, length: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    blk = _block(length)
    sizes = sa.BlockSizes(block_q=blk, block_kv=blk, block_kv_compute=blk, block_q_dkv=blk, block_kv_dkv=blk,
                          block_kv_dkv_compute=blk, block_q_dq=blk, block_kv_dq=blk)
    mask = sa.MultiHeadMask([sa.CausalMask((length, length))] * heads)
    # concrete arrays even when first built inside a trace: the cached kernel outlives it
    with jax.ensure_compile_time_eval():
        return sa.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_causal(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, segments: jnp.ndarray) -> jnp.ndarray:
    """Causal self-attention through the splash kernel. q [B, T, H, hd]; k, v [B, T, K, hd]
    (K dividing H); segments [B, T] int32, a query sees keys of its own segment only.
    Returns [B, T, H*hd]. The slot axis is padded to a multiple of BLOCK with an extra
    segment; on a mesh the call is split over the batch and, where it divides, the heads."""
    b, t, h, hd = q.shape
    pad = -t % BLOCK
    q = q * jnp.asarray(hd ** -0.5, q.dtype)  # the kernel does not scale
    if pad:
        widen = lambda x: jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
        q, k, v = widen(q), widen(k), widen(v)
        segments = jnp.pad(segments, ((0, 0), (0, pad)), constant_values=2)
    out = _sharded(_splash_local, q, k, v, segments)
    return out[:, :t].reshape(b, t, h * hd)


def _splash_local(q, k, v, segments):
    """One device's share: [b, T, h, hd] in, [b, T, h, hd] out."""
    from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds

    kernel = _splash_kernel(q.shape[2], q.shape[1], platform() != "tpu")
    heads_first = lambda x: jnp.swapaxes(x, 1, 2)

    def one(q, k, v, seg):
        return kernel(q, k, v, segment_ids=SegmentIds(q=seg, kv=seg))

    out = jax.vmap(one)(heads_first(q), heads_first(k), heads_first(v), segments)
    return heads_first(out)


def _sharded(fn, q, k, v, segments):
    """fn(q, k, v, segments) under shard_map over the batch and head axes of the mesh in
    context (the trainer, comet-lower and comet-plan trace under
    `parallel.sharding.tracing`), or directly when there is none."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return fn(q, k, v, segments)
    from jax.sharding import PartitionSpec as P

    free = [a for a in mesh.axis_names if a not in mesh.manual_axes]
    size = dict(zip(mesh.axis_names, mesh.axis_sizes))
    batch = tuple(a for a in BATCH_AXES if a in free and size[a] > 1)
    if batch and q.shape[0] % int(np.prod([size[a] for a in batch])):
        batch = ()  # a batch the axes do not divide stays whole on every device
    heads = HEAD_AXIS if HEAD_AXIS in free and size[HEAD_AXIS] > 1 and k.shape[2] % size[HEAD_AXIS] == 0 else None
    qkv = P(batch or None, None, heads, None)
    run = jax.shard_map(fn, mesh=mesh, in_specs=(qkv, qkv, qkv, P(batch or None, None)), out_specs=qkv,
                        axis_names=set(free), check_vma=False)
    return run(q, k, v, segments)
