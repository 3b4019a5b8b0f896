"""A reversible residual stack whose backward pass recomputes its inputs.

RevNet coupling, as Trax's `ReversibleHalfResidual` + `ReversibleSwap`
compose it in the Reformer's decoder block: on two streams (x1, x2),

    y1 = x1 + f(x2)        (attention half)
    y2 = x2 + g(y1)        (feed-forward half)

so x2 = y2 - g(y1) and x1 = y1 - f(x2). `reversible_stack` runs a stack
of such blocks with `jax.lax.scan` over periods of P blocks (P = 1 when every
layer has the same type; a list of attention types cycling over the layers
makes a period of P different blocks, unrolled inside the scan body, so
one compiled body serves any depth). With `reversible=True` a
`jax.custom_vjp` keeps only the stack's final outputs for the backward
pass, which walks the periods in reverse, recomputing each block's inputs
from its outputs and its gradients with `jax.vjp` of f and g: activation
memory does not grow with depth (benchmarks/reversible_memory.py measures
it). `jax.checkpoint` cannot give this: it still saves each layer's input,
and under XLA:CPU measured no saving at all (issue 23). With
`reversible=False` the same scan is differentiated by plain autodiff.

f and g must be deterministic functions of their arguments: randomness
(hash keys, dropout keys) comes in through `consts`, drawn before the
stack, so the backward's recomputation replays the forward exactly.
Reconstruction rounds: x1 and x2 are recomputed to float32 rounding of the
residuals' sizes (tests/test_flax_reformer.py measures the gradients).

Shapes: x1, x2 float[B, T, Dm]; `params` and `consts` are lists of P pytrees
whose leaves have a leading axis of n_layers / P periods.
"""
from typing import Callable, Sequence, Tuple

import jax

__all__ = ['Half', 'reversible_stack']

# f(params_j, consts_j, shared, x) -> residual of the same shape as x.
Half = Callable[..., jax.Array]


def _add(a, b):
  return jax.tree.map(lambda x, y: x + y, a, b)


def _forward(halves, params, consts, shared, x1, x2):
  def period(carry, xs):
    x1, x2 = carry
    p, c = xs
    for j, (f, g) in enumerate(halves):
      x1 = x1 + f(p[j], c[j], shared, x2)
      x2 = x2 + g(p[j], c[j], shared, x1)
    return (x1, x2), None
  (y1, y2), _ = jax.lax.scan(period, (x1, x2), (params, consts))
  return y1, y2


def _backward(halves, params, consts, shared, y1, y2, g1, g2):
  """Reverse walk: inputs from outputs, then the blocks' vjps."""
  def period(carry, xs):
    y1, y2, g1, g2 = carry
    p, c = xs
    grads = [None] * len(halves)
    for j in reversed(range(len(halves))):
      f, g = halves[j]
      g_out, g_vjp = jax.vjp(lambda pj, y: g(pj, c[j], shared, y), p[j], y1)
      x2 = y2 - g_out
      dp_g, dy1 = g_vjp(g2)
      g1 = g1 + dy1
      f_out, f_vjp = jax.vjp(lambda pj, x: f(pj, c[j], shared, x), p[j], x2)
      x1 = y1 - f_out
      dp_f, dx2 = f_vjp(g1)
      g2 = g2 + dx2
      grads[j] = _add(dp_f, dp_g)
      y1, y2 = x1, x2
    return (y1, y2, g1, g2), grads
  (_, _, g1, g2), grads = jax.lax.scan(
      period, (y1, y2, g1, g2), (params, consts), reverse=True)
  return grads, g1, g2


def reversible_stack(halves: Sequence[Tuple[Half, Half]], params, consts,
                     shared, x1: jax.Array, x2: jax.Array, *,
                     reversible: bool = True) -> Tuple[jax.Array, jax.Array]:
  """(x1, x2) through n_layers reversible blocks -> (y1, y2).

  Args:
    halves: P pairs (f, g), one per block of a period, each
      `f(params_j, consts_j, shared, x) -> float[B, T, Dm]`.
    params: P pytrees (the differentiable weights of block j of every
      period), leaves with a leading period axis.
    consts: P pytrees of the same leading axis, not differentiated (keys,
      non-parameter state).
    shared: a pytree every block sees, not differentiated (the mask).
    x1, x2: the two streams.
    reversible: True: the custom VJP that recomputes inputs; False: plain
      autodiff of the same scan (memory grows with depth).
  """
  halves = tuple(halves)
  if not reversible:
    return _forward(halves, params, consts, shared, x1, x2)

  @jax.custom_vjp
  def stack(params, consts, shared, x1, x2):
    return _forward(halves, params, consts, shared, x1, x2)

  def stack_fwd(params, consts, shared, x1, x2):
    y1, y2 = _forward(halves, params, consts, shared, x1, x2)
    return (y1, y2), (params, consts, shared, y1, y2)

  def stack_bwd(residuals, cotangents):
    params, consts, shared, y1, y2 = residuals
    grads, g1, g2 = _backward(halves, params, consts, shared, y1, y2,
                              *cotangents)
    return grads, None, None, g1, g2

  stack.defvjp(stack_fwd, stack_bwd)
  return stack(params, consts, shared, x1, x2)
