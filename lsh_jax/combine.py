"""Combining the hash rounds by their log-sum-exp normalisers (SPEC.md §5).

Round h attended over its candidate set C_h and returned o_h, already
normalised by Z_h = exp(lse_h). Attention over the union of all candidate
sets is sum_h Z_h o_h / sum_h Z_h, i.e. a softmax over the rounds' lse
weighting their outputs: not a second attention, a re-weighting by how much
probability mass each round found.
"""
import jax
import jax.numpy as jnp


def round_weights(lse):
  """softmax over rounds: float[R, L] -> float[R, L], columns sum to 1."""
  return jnp.exp(lse - jax.nn.logsumexp(lse, axis=0, keepdims=True))


def combine_rounds(o, lse):
  """Combines per-round outputs.

  Args:
    o: float[R, L, Dv] each round's output in original order.
    lse: float[R, L] each round's log-sum-exp of the logits.

  Returns:
    float[L, Dv]; with R == 1 this is o[0].
  """
  if o.shape[0] == 1:
    return o[0]
  return jnp.sum(o * round_weights(lse)[..., None], axis=0)
