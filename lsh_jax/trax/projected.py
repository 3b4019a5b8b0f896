"""The LSH layer with its projections taken out of the (example, head) loop.

`LSHSelfAttention`'s computation per pair is project -> attend -> project
back (`lsh_head` in tests/trax_testing.py). Run pair by pair (`heads`),
each projection is a [L, Dm] x [Dm, D] matmul inside the loop over blocks,
where XLA:CPU runs it on one thread, as Trax does. Here the projections of every pair are three
einsums over the whole batch ([B*L, Dm] x [Dm, N*D]: large matmuls that
use every core), and only the attention runs in the loop over blocks of
`n_parallel_heads` pairs (`kernels.pure_head`, the same function as
`PureLSHSelfAttention`'s). The backward pass is the same split: the
output's cotangent goes back through w_o for every pair at once, the
attention's vjp runs block by block (recomputed from the stored buckets),
and the input and weight gradients are einsums again.

Memory: q, v, their gradients and the attention output of every pair are
[B, N, L, D] each, together a few times the size of x (at d_qk = d_v =
d_model / N, each is x's size); the attention's own intermediates stay
those of one block.

Shapes: B batch, N heads, L length, Dm d_model, D = d_qk, Dv = d_v,
P = B * N pairs (p = example * N + head, Trax's order).
"""
import functools

import jax
import jax.numpy as jnp

from lsh_jax.trax import heads as trax_heads

__all__ = ['run']


def _project(x, weights, bias):
  """x [B, L, Dm] -> q [B, N, L, D], v [B, N, L, Dv] of every head."""
  w_q, w_v = weights[0], weights[1]
  q = jnp.einsum('bld,hdk->bhlk', x, w_q)
  v = jnp.einsum('bld,hdk->bhlk', x, w_v)
  if bias:
    b_q, b_v = weights[3], weights[4]
    q, v = q + b_q[:, None, :], v + b_v[:, None, :]
  return q, v


def _pairs(x):
  """[B, N, L, ...] -> [P, L, ...]."""
  return x.reshape((-1,) + x.shape[2:])


def run(attend_fn, x, mask, weights, state, *, n_heads, n_parallel_heads,
        bias, output_grad=None, update_state=True):
  """`heads.forward_and_or_backward` for one LSH head of the layer,
  projections outside the loop.

  Args:
    attend_fn: `kernels.pure_head` with its spec and rng bound: one pair's
      ((q [L, D], v [L, Dv]), mask, (), state) -> (o [L, Dv], new state).
    x: float[B, L, Dm]; mask: bool[B, L] or None.
    weights: (w_q [N, Dm, D], w_v [N, Dm, Dv], w_o [N, Dv, Dm]) and with
      `bias` also (b_q [N, D], b_v [N, Dv]).
    state: pytree, every leaf [P, ...].
    n_heads, n_parallel_heads: N and pairs per block (`heads.block_shape`).
    output_grad: float[B, L, Dm] or None.

  Returns:
    (out [B, L, Dm], new_state, x_grad or None, weights_grad or None), as
    `heads.forward_and_or_backward`.
  """
  batch = x.shape[0]
  trax_heads.block_shape(batch, n_heads, n_parallel_heads)  # validates
  w_o = weights[2]
  pair_mask = None if mask is None else jnp.repeat(mask, n_heads, axis=0)
  attend = functools.partial(
      trax_heads.forward_and_or_backward, attend_fn, mask=pair_mask,
      weights=(), state=state, n_heads=1, n_parallel_heads=n_parallel_heads,
      update_state=update_state)
  unpair = lambda o: o.reshape((batch, n_heads) + o.shape[1:])
  if output_grad is None:
    q, v = _project(x, weights, bias)
    o, new_state, _, _ = attend((_pairs(q), _pairs(v)))
    out = jnp.einsum('bhlv,hvd->bld', unpair(o), w_o)
    return out, new_state, None, None
  (q, v), project_vjp = jax.vjp(lambda x, w: _project(x, w, bias), x,
                                weights)
  g_o = jnp.einsum('bld,hvd->bhlv', output_grad, w_o)
  o, new_state, (g_q, g_v), _ = attend((_pairs(q), _pairs(v)),
                                      output_grad=_pairs(g_o))
  o = unpair(o)
  out = jnp.einsum('bhlv,hvd->bld', o, w_o)
  g_w_o = jnp.einsum('bhlv,bld->hvd', o, output_grad)
  x_grad, w_grad = project_vjp((unpair(g_q), unpair(g_v)))
  w_grad = tuple(w_grad[:2]) + (g_w_o,) + tuple(w_grad[3:])
  return out, new_state, x_grad, w_grad
