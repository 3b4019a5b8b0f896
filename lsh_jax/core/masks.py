"""Attention-logit masks for shared-QK LSH attention (docs/algorithm.md §3).

Masks are *subtracted* from the logits rather than set with `where`, in the
same order as Trax 1.4.1 (causal, self, padding), so that float32 results
agree with Trax bit for bit wherever the masks agree.
"""
import jax.numpy as jnp

__all__ = [
    'at_least_float32', 'CAUSAL_PENALTY', 'mask_logits', 'PADDING_PENALTY',
    'SELF_PENALTY',
]

# A key in the future is impossible: exp(-1e9) underflows to exactly 0.
CAUSAL_PENALTY = 1e9
# Keys are the queries themselves, so q.k_self is always the largest dot
# product; a large but finite penalty lets a token attend to itself only when
# no other candidate is available (e.g. causal position 0).
SELF_PENALTY = 1e5
# Padding keys must never receive probability, at any position.
PADDING_PENALTY = 1e9


def at_least_float32(x):
  """x in float32 or wider: logits near the -1e5 self mask, log-sum-exps and
  the round weights need float32's range and resolution (half-precision
  inputs are computed in float32)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def mask_logits(dots, q_pos, kv_pos, kv_valid=None, *, causal,
                exclude_self=True):
  """Applies causal, exclude-self and padding masks.

  Args:
    dots: float[..., Q, K] attention logits.
    q_pos: int[..., Q] original positions of the queries.
    kv_pos: int[..., K] original positions of the keys.
    kv_valid: bool[..., K], True for real tokens, or None (no padding).
    causal: whether a query may not see later positions.
    exclude_self: whether a token avoids itself (always, with shared QK).

  Returns:
    float[..., Q, K], the masked logits.
  """
  q_pos = q_pos[..., :, None]
  kv_pos = kv_pos[..., None, :]
  if causal:
    dots = dots - CAUSAL_PENALTY * (q_pos < kv_pos).astype(dots.dtype)
  if exclude_self:
    dots = dots - SELF_PENALTY * (q_pos == kv_pos).astype(dots.dtype)
  if kv_valid is not None:
    dots = dots - PADDING_PENALTY * jnp.logical_not(
        kv_valid[..., None, :]).astype(dots.dtype)
  return dots
