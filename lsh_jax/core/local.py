"""Dense and chunked attention as Trax 1.4.1's `attend` computes it.

Pure JAX (no Trax import): the attention of the dense Trax layers
(`lsh_jax.trax.SelfAttention` with separate keys, chunked or not, and its
decoding; `EncDecAttention`) and of the Flax `LocalSelfAttention`. Unlike the LSH kernels there is no sort: chunk n of
the queries attends to key chunks n - before, ..., n + after taken modulo
the number of chunks (Trax's `look_adjacent` wraps around; a window longer
than the sequence sees a chunk more than once, as in Trax).

Shapes: Lq queries, Lk keys, D = d_qk, Dv = d_v, C = chunk_len, M = Lq / C
chunks, W = 1 + before + after chunks per window.
"""
import jax
import jax.numpy as jnp

from lsh_jax.core import chunked
from lsh_jax.core import masks

__all__ = ['attend', 'look_adjacent', 'scale_keys']


def scale_keys(k: jax.Array) -> jax.Array:
  """Separate keys [L, D] scaled by 1/sqrt(D) (no length normalisation)."""
  return k / jnp.sqrt(jnp.asarray(k.shape[-1], k.dtype))


def look_adjacent(x: jax.Array, n_chunks_before: int,
                  n_chunks_after: int) -> jax.Array:
  """x [M, C, ...] -> [M, W * C, ...]: each chunk's window, wrapping around."""
  if not n_chunks_before and not n_chunks_after:
    return x
  # Offset i holds chunk (n + i) mod M: jnp.roll by -i.
  return jnp.concatenate(
      [jnp.roll(x, -i, axis=0)
       for i in range(-n_chunks_before, n_chunks_after + 1)], axis=1)


def attend(q: jax.Array, keys: jax.Array, v: jax.Array, *,
           q_pos: jax.Array, kv_pos: jax.Array,
           kv_valid: jax.Array | None, causal: bool, exclude_self: bool,
           chunk_len: int | None = None, n_chunks_before: int = 0,
           n_chunks_after: int = 0, dropout_rate: float = 0.0,
           dropout_key: jax.Array | None = None) -> jax.Array:
  """Softmax attention of q [Lq, D] over keys [Lk, D] (already scaled).

  Masks (subtracted, in Trax's order; `lsh_jax.core.masks`): causal
  (q_pos < kv_pos), exclude-self (q_pos == kv_pos) and padding (not
  kv_valid). Padded *queries* are computed like any other, as in Trax: their
  logits stay finite (a penalty, not -inf), so a query whose keys are all
  masked gets a finite average, never NaN.

  With `chunk_len`, Lq == Lk must be a multiple of it: query chunk n attends
  to key chunks n - before ... n + after (mod M). Attention dropout draws
  one [C, W * C] (unchunked: [Lq, Lk]) keep mask shared by every chunk, as
  Trax's `attend` does.

  Args:
    q: float[Lq, D]; keys: float[Lk, D]; v: float[Lk, Dv].
    q_pos: int[Lq]; kv_pos: int[Lk] positions for the causal/self masks.
    kv_valid: bool[Lk] (True = real token) or None.

  Returns:
    float[Lq, Dv].
  """
  if chunk_len is None:
    chunk = lambda a: a[None]
    window = lambda a: a[None]
  else:
    chunk = lambda a: a.reshape((-1, chunk_len) + a.shape[1:])
    window = lambda a: look_adjacent(chunk(a), n_chunks_before,
                                     n_chunks_after)
  dots = jnp.einsum('ncd,nkd->nck', chunk(q), window(keys))  # [M, C, W*C]
  dots = masks.mask_logits(
      dots, chunk(q_pos), window(kv_pos),
      None if kv_valid is None else window(kv_valid), causal=causal,
      exclude_self=exclude_self)
  probs = jnp.exp(dots - jax.nn.logsumexp(dots, axis=-1, keepdims=True))
  if dropout_rate:
    probs = probs * chunked.dropout_multiplier(
        dropout_key, dropout_rate, dots.shape[-2], dots.shape[-1], dots.dtype)
  out = jnp.einsum('nck,nkd->ncd', probs, window(v))
  return out.reshape(-1, v.shape[-1])
