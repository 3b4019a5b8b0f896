"""Combining hash rounds by their log-sum-exps (docs/algorithm.md §5).

Round h attended over its candidate set C_h and returned o_h, already
normalised by Z_h = exp(lse_h). Attention over the union of all candidate
sets is sum_h Z_h o_h / sum_h Z_h, i.e. a softmax over the rounds' lse
weighting their outputs: not a second attention, a re-weighting by how much
probability mass each round found.
"""
import jax
import jax.numpy as jnp

__all__ = [
    'add_round', 'combine_rounds', 'finish_rounds', 'finish_rounds_backward',
    'no_rounds', 'round_weights',
]


def round_weights(lse: jax.Array) -> jax.Array:
  """softmax over rounds: float[R, L] -> float[R, L], columns sum to 1."""
  return jnp.exp(lse - jax.nn.logsumexp(lse, axis=0, keepdims=True))


def combine_rounds(o: jax.Array, lse: jax.Array) -> jax.Array:
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


# The same combine, one round at a time (as `rounds.attend_rounds_in_turn`
# runs them): a running maximum of the lse and the outputs weighted relative
# to it, so that no [R, L, Dv] stack of round outputs is kept. The last step
# divides by the normaliser of all rounds, computed from the kept lse
# [R, L] exactly as `round_weights` does; each round's weight then differs
# from `round_weights`' by a few float32 ulps (one rounding per step), even
# where float32 cannot resolve that normaliser (logits near the -1e5 self
# mask, docs/algorithm.md §5): there both use the same rounded value.


def no_rounds(length, d_v, dtype):
  """The empty running combine: (sum float[L, Dv], top float[L])."""
  return (jnp.zeros((length, d_v), dtype),
          jnp.full((length,), -jnp.inf, dtype))


def add_round(state, o, lse):
  """Adds one round's o float[L, Dv] and lse float[L] to the running combine.

  Returns (sum, top): top = max of the lse so far, sum = sum of the rounds'
  o * exp(lse - top). The first round gives (o, lse) exactly.
  """
  total, top = state
  new_top = jnp.maximum(top, lse)
  total = (total * jnp.exp(top - new_top)[:, None]
           + o * jnp.exp(lse - new_top)[:, None])
  return total, new_top


def finish_rounds(state, lse):
  """float[L, Dv]: the running combine normalised by all rounds' lse [R, L]."""
  total, top = state
  return total * jnp.exp(top - jax.nn.logsumexp(lse, axis=0))[:, None]


def finish_rounds_backward(lse, out, g):
  """The combine's backward, for the rounds' cotangents one round at a time.

  out = sum_h w_h o_h with w_h = exp(lse_h - logsumexp(lse)): o_h gets
  w_h g and lse_h gets w_h (g . o_h) - s_h (g . out), where s = softmax(lse)
  is the derivative of logsumexp. (s equals w but for the rounding of
  logsumexp, which matters where float32 cannot resolve it,
  docs/algorithm.md §5; autodiff of `combine_rounds` and Trax use s there.)
  The first part of lse_h's cotangent, w_h (g . o_h), is left to the round:
  its backward forms that delta anyway (`g_lse_adds_delta` in
  `chunked.chunked_attend_backward`), so no round output needs to be kept or
  recomputed.

  Args:
    lse: float[R, L] every round's log-sum-exp.
    out: float[L, Dv] the combined output.
    g: float[L, Dv] its cotangent.

  Returns:
    (weights float[R, L], g_lse float[R, L]): round h's o_h gets
    `g * weights[h][:, None]` and its lse_h gets `g_lse[h]` plus the delta.
  """
  weights = round_weights(lse)
  softmax = jax.nn.softmax(lse, axis=0)
  return weights, -softmax * jnp.sum(g * out, axis=-1)
