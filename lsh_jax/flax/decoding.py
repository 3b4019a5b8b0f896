"""Decoding with a cache: the Flax modules' `decode=True` and `init_cache`.

For `LSHSelfAttention`, `SelfAttention` and `LocalSelfAttention`.

As Flax's `nnx.MultiHeadAttention`: `module.init_cache(input_shape)` puts
the cache in `nnx.Cache` variables (`nnx.state(module, nnx.Cache)`), and a
call with `decode=True` (on the call or the module) reads and updates it.
The algorithm is Trax 1.4.1's `mode='predict'`, the one
`lsh_jax.trax.LSHSelfAttention(mode='predict')` runs
(`lsh_jax.core.decoding`, docs/decoding.md):

  * the cache holds the last Lm positions' projected queries/keys and values
    (Lm = input_shape[-2], Trax's `predict_mem_len`); when a call does not fit,
    the oldest `drop_len` positions are dropped (Trax's `predict_drop_len`);
  * the first call may carry a prefix of any length, in one call; then one
    token per call (or short calls of at most `drop_len` tokens);
  * LSH: each token is hashed with the module's fixed evaluation key
    (`hash_key`, one key per (example, head) as in `lsh_self_attention`), and
    attends to the `n_hashes * chunk_len * (1 + n_chunks_before)` positions
    sharing a bucket with it, topped up with the most recent others; the
    dense modules attend to every position in the cache up to their own
    (not only to their chunk window, as Trax's dense decoding; a long
    prefix is attended in chunks as in training).

A step costs O(Lm) whatever the number of tokens decoded before. Positions
not yet written hold the projections of a zero input, as Trax's memory of
zero inputs. Decoding draws nothing: no dropout, no fresh hash keys.

Shapes: B batch, T tokens per call, Lm the cache's length, F in_features,
N heads, H query/key depth per head, Hv value depth per head, R rounds.
"""
import dataclasses
import functools
from typing import Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import lsh_jax
from lsh_jax.core import decoding
from lsh_jax.core import multihead
from lsh_jax.core import validation

__all__ = [
    'attend', 'Cache', 'decode', 'init_cache', 'Settings', 'settings_for',
]


@dataclasses.dataclass(frozen=True)
class Settings:
  """A module's static decoding settings (hashable: a jit static argument).

  n_hashes 0: a dense module (chunk_len then only chunks a long prefix,
  None: no chunks); n_buckets is resolved (never None).
  """
  drop_len: int
  n_hashes: int = 0
  n_buckets: Union[int, Tuple[int, ...], None] = None
  chunk_len: Optional[int] = None
  n_chunks_before: int = 0
  n_chunks_after: int = 0


class Cache(nnx.Module):
  """A module's decoding cache: `nnx.Cache` variables and static settings.

  Attributes:
    index: int32[], where the next token goes (Trax's `mem_end`).
    qk: float[B, Lm, N, H], value: float[B, Lm, N, Hv], the projections
      (`LocalSelfAttention`: qk holds its queries, `key` [B, Lm, N, H] its
      keys; None for the shared-QK modules).
    buckets: LSH only, int32[B, N, R, Lm] the positions' bucket ids (Trax's
      flat ids with round offsets).
    settings: `Settings`; batched: whether calls take [B, T, F] (else
      [T, F], with B = 1 inside).
  """

  def __init__(self, *, batch, mem_len, num_heads, depth, v_depth, settings,
               batched, separate_keys, dtype):
    self.settings, self.batched = settings, batched
    self.index = nnx.Cache(jnp.zeros((), jnp.int32))
    self.qk = nnx.Cache(jnp.zeros((batch, mem_len, num_heads, depth), dtype))
    self.key = nnx.data(None)
    if separate_keys:
      self.key = nnx.Cache(jnp.zeros((batch, mem_len, num_heads, depth),
                                     dtype))
    self.value = nnx.Cache(jnp.zeros((batch, mem_len, num_heads, v_depth),
                                     dtype))
    self.buckets = nnx.data(None)
    if settings.n_hashes:
      self.buckets = nnx.Cache(jnp.zeros(
          (batch, num_heads, settings.n_hashes, mem_len), jnp.int32))


def _check_module(module):
  """The module settings decoding supports (ValueError naming them)."""
  if not module.causal:
    raise ValueError('decode=True needs causal=True (decoding sees only '
                     'earlier tokens), got causal=False')
  if getattr(module, 'n_hashes', None) is None:
    return  # dense: Trax's dense decoding allows n_chunks_after
  if module.n_chunks_after:
    raise ValueError(f'decode=True needs n_chunks_after=0 (later chunks are '
                     f'not decoded yet), got {module.n_chunks_after}')
  if not (module.allow_duplicate_attention and module.attend_across_buckets):
    raise ValueError(
        "decode=True computes Trax 1.4.1's attention only: "
        'allow_duplicate_attention and attend_across_buckets must be True, '
        f'got {module.allow_duplicate_attention} and '
        f'{module.attend_across_buckets}')


def _projections(module):
  """The module's projections the cache keeps: (qk, value) or, with
  separate keys (`LocalSelfAttention`), (qk, key, value)."""
  if getattr(module, 'key', None) is not None:
    return module.qk, module.key, module.value
  return module.qk, module.value


def settings_for(module, mem_len: int, drop_len: Optional[int]) -> Settings:
  """The module's `Settings` for a cache of `mem_len` positions.

  drop_len None: chunk_len when the module has chunks (Trax's default),
  else half the cache, at least 1 (Trax has no default without chunks);
  at most the cache's length.
  """
  n_hashes = getattr(module, 'n_hashes', None)
  chunk_len = getattr(module, 'chunk_len', None)
  if drop_len is None:
    drop_len = min(chunk_len or max(1, mem_len // 2), mem_len)
  drop_len = validation.check_positive_int('drop_len', drop_len)
  if drop_len > mem_len:
    raise ValueError(f'drop_len must be <= {mem_len} (the cache length, '
                     f'input_shape[-2]), got {drop_len}')
  if not n_hashes:
    return Settings(drop_len=drop_len, chunk_len=chunk_len,
                    n_chunks_before=getattr(module, 'n_chunks_before', 0),
                    n_chunks_after=getattr(module, 'n_chunks_after', 0))
  n_buckets = module.n_buckets
  if n_buckets is None:  # what the module would use on a whole cache
    n_buckets = lsh_jax.auto_n_buckets(mem_len, module.chunk_len)
  return Settings(drop_len=drop_len, n_hashes=n_hashes,
                  n_buckets=validation.check_n_buckets(n_buckets),
                  chunk_len=module.chunk_len,
                  n_chunks_before=module.n_chunks_before)


def init_cache(module, input_shape: Sequence[int], dtype=jnp.float32,
               drop_len: Optional[int] = None) -> None:
  """Creates `module.cache` for inputs `input_shape` = (B, Lm, F) or (Lm, F).

  See `SelfAttention.init_cache`.
  """
  _check_module(module)
  shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else ()
  if (len(shape) not in (2, 3) or shape[-1] != module.in_features or
      not all(isinstance(d, (int, np.integer)) and d >= 1 for d in shape)):
    raise ValueError(f'input_shape must be (batch, cache length, '
                     f'{module.in_features}) or (cache length, '
                     f'{module.in_features}) (in_features), positive ints, '
                     f'got {input_shape}')
  mem_len = int(shape[-2])
  num_heads = module.num_heads
  module.cache = Cache(
      batch=int(shape[0]) if len(shape) == 3 else 1, mem_len=mem_len,
      num_heads=num_heads, depth=module.qk_features // num_heads,
      v_depth=module.v_features // num_heads,
      settings=settings_for(module, mem_len, drop_len),
      batched=len(shape) == 3, separate_keys=len(_projections(module)) == 3,
      dtype=dtype)


def decode(module, x: jax.Array, mask=None) -> jax.Array:
  """The module on T new tokens x [B, T, F] (or [T, F]) with its cache.

  Returns:
    float[B, T, out_features] (or [T, out_features]).
  """
  cache = module.cache
  if cache is None:
    raise ValueError('decode=True needs a cache: call '
                     'module.init_cache(input_shape) first')
  if mask is not None:
    raise ValueError('decode=True takes no mask (decoding has no padding '
                     'input: positions not yet written are in the future, '
                     'hidden by the causal mask)')
  batch = cache.qk.shape[0]
  expected = ('[batch, length, features] with batch ' + str(batch)
              if cache.batched else '[length, features]')
  if (x.ndim == 3) != cache.batched or (cache.batched and
                                        x.shape[0] != batch):
    raise ValueError(f'x must have shape {expected}, as the cache made by '
                     f'init_cache, got {tuple(x.shape)}')
  xb = x if cache.batched else x[None]
  projections = _projections(module)
  zero = jnp.zeros((1, xb.shape[-1]), xb.dtype)  # Trax's unwritten input
  fill = tuple(p(zero)[0] for p in projections)  # [N, H], ..., [N, Hv]
  stored = [cache.qk, cache.value] if cache.key is None else [
      cache.qk, cache.key, cache.value]
  keys = None
  if cache.settings.n_hashes:
    keys = multihead.head_keys(module.hash_key[...], batch, module.num_heads)
  out, mem, index, buckets = attend(
      tuple(p(xb) for p in projections), fill,
      tuple(variable[...] for variable in stored), cache.index[...],
      None if cache.buckets is None else cache.buckets[...], keys,
      settings=cache.settings)
  for variable, value in zip(stored, mem):
    variable[...] = value
  cache.index[...] = index
  if cache.buckets is not None:
    cache.buckets[...] = buckets
  out = module.out(out.astype(xb.dtype))
  return out if cache.batched else out[0]


@functools.partial(jax.jit, static_argnames='settings')
def attend(new, fill, mem, index, buckets, keys, *, settings):
  """One decoding call of the attention itself, all (example, head) pairs.

  Args:
    new: (qk float[B, T, N, H], value float[B, T, N, Hv]) of the new tokens
      (separate keys: (q, k, value)).
    fill: (float[N, H], float[N, Hv]), the projections of a zero input
      (separate keys: three).
    mem: the cache's (qk [B, Lm, N, H], value [B, Lm, N, Hv]) (or three).
    index: int32[] where the next token goes.
    buckets: int32[B, N, R, Lm] (LSH) or None (dense).
    keys: PRNG keys [B, N] (LSH) or None.
    settings: `Settings`.

  Returns:
    (o float[B, T, N, Hv], the new memory, index, buckets).
  """
  n_new = new[0].shape[1]
  # A cache at its start holds Trax's zero inputs (the whole memory is
  # attended to by a short prefix: their projections matter to hashing).
  mem = jax.tree_util.tree_map(
      lambda m, f: jnp.where(index == 0, jnp.broadcast_to(f, m.shape)
                             .astype(m.dtype), m), mem, fill)
  inputs, mem, q_start, new_index = decoding.use_memory(
      new, index, mem, drop_len=settings.drop_len, fill=fill)
  identity = lambda rows: rows
  rows_axes = (1,) * len(new)  # heads of an example's [L', N, .] rows
  fill_axes = (0,) * len(new)
  if not settings.n_hashes:
    mem_len = mem[0].shape[1]
    long_prefix = not (n_new <= settings.drop_len and n_new < mem_len)
    chunked = (long_prefix and settings.chunk_len is not None and
               n_new > settings.chunk_len)
    pair = functools.partial(
        decoding.dense_decode,
        project=(lambda r: (r[0], None, r[1])) if len(new) == 2 else identity,
        q_start=q_start, q_len=n_new,
        chunk_len=settings.chunk_len if chunked else None,
        n_chunks_before=settings.n_chunks_before,
        n_chunks_after=settings.n_chunks_after)
    per_example = jax.vmap(lambda rows, f: pair(rows, fill=f),
                           in_axes=(rows_axes, fill_axes), out_axes=1)
    out = jax.vmap(per_example, in_axes=(0, None))(inputs, fill)
    return out, mem, new_index, buckets
  common = dict(project=identity, q_start=q_start,
                n_buckets=settings.n_buckets, n_hashes=settings.n_hashes,
                chunk_len=settings.chunk_len,
                n_chunks_before=settings.n_chunks_before,
                drop_len=settings.drop_len)

  def pair(rows, pair_fill, pair_buckets, key):
    if n_new == 1:
      o, pair_buckets, _ = decoding.lsh_step(rows, pair_buckets, index, key,
                                             **common)
    else:
      o, pair_buckets, _ = decoding.lsh_prefix(
          rows, pair_buckets, index, key, q_len=n_new, n_chunks_after=0,
          fill=pair_fill, **common)
    return o, pair_buckets

  per_example = jax.vmap(pair, in_axes=(rows_axes, fill_axes, 0, 0),
                         out_axes=(1, 0))
  o, buckets = jax.vmap(per_example, in_axes=(0, None, 0, 0))(
      inputs, fill, buckets, keys)
  return o, mem, new_index, buckets
