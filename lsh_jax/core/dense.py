"""Dense attention: the O(L^2) reference with `lsh_attention`'s conventions.

`full_attention` is the public, checked and jitted entry point;
`dense_attention` is its computation, unchecked and unjitted, for callers
that trace it into their own program.
"""
import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from lsh_jax.core import chunked
from lsh_jax.core import masks
from lsh_jax.core import validation

__all__ = ['dense_attention', 'full_attention']


def dense_attention(q, k, v, mask, *, causal, dropout_multiplier=None):
  """Dense attention: `full_attention`'s computation, unchecked, unjitted.

  Args:
    q: float[L, D]; k: float[L, D] or None (shared QK); v: float[L, Dv];
    mask: bool[L] or None.
    causal: a query does not see later positions.
    dropout_multiplier: float[L, L] applied to the probabilities, or None
      (the Trax layer's attention dropout with separate keys).

  Returns:
    float[L, Dv]; zeros at padded positions.
  """
  out_dtype = jnp.result_type(q, v)
  q, v = masks.at_least_float32(q), masks.at_least_float32(v)
  k = None if k is None else masks.at_least_float32(k)
  positions = jnp.arange(q.shape[0], dtype=jnp.int32)
  if k is None:  # shared QK: normalised keys, a token avoids itself
    dots = masks.mask_logits(q @ chunked.normalize_keys(q).T, positions,
                             positions, mask, causal=causal)
  else:
    dots = q @ (k / jnp.sqrt(jnp.asarray(k.shape[-1], k.dtype))).T
    dots = masks.mask_logits(dots, positions, positions, mask, causal=causal,
                             exclude_self=False)
  probs = jax.nn.softmax(dots, axis=-1)
  if dropout_multiplier is not None:
    probs = probs * dropout_multiplier
  out = probs @ v
  if mask is not None:
    out = jnp.where(mask[:, None], out, 0)
  return out.astype(out_dtype)


@functools.partial(jax.jit, static_argnames=('causal',))
def _full_attention(q, k, v, mask, *, causal):
  return dense_attention(q, k, v, mask, causal=causal)


def full_attention(q: ArrayLike, v: ArrayLike, *, k: ArrayLike | None = None,
                   causal: bool = False,
                   mask: ArrayLike | None = None) -> jax.Array:
  """Dense attention with the same conventions as `lsh_attention`.

  With shared QK (`k=None`): length-normalised keys scaled by 1/sqrt(D) and
  the exclude-self mask. With separate keys `k`: keys `k / sqrt(D)` and no
  exclude-self mask (Trax's `attend` with `share_qk=False`). Causal and
  padding masks either way. O(L^2) memory: the exact reference.

  Args:
    q: float[L, D]; v: float[L, Dv]; k: float[L, D] or None;
    mask: bool[L] or None.

  Returns:
    float[L, Dv].

  >>> import jax, jax.numpy as jnp
  >>> from lsh_jax.core import full_attention
  >>> q = jax.random.normal(jax.random.key(0), (6, 4))
  >>> out = full_attention(q, jnp.ones((6, 3)), causal=True)
  >>> out.shape, bool(jnp.allclose(out, 1.0))  # each row averages ones
  ((6, 3), True)
  """
  validation.check_dense_args(q, v, k, mask)
  return _full_attention(q, k, v, mask, causal=bool(causal))
