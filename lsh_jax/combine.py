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
  weights = round_weights(lse)
  # Adds, not a reduce over the round axis: XLA:CPU hands that reduce (and
  # its transpose, which broadcasts the weights to [R, L, Dv]) to a library
  # call that took 50 ms at 16K x 4 in the backward pass; R is small.
  out = o[0] * weights[0][:, None]
  for h in range(1, o.shape[0]):
    out = out + o[h] * weights[h][:, None]
  return out
