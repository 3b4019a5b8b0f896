"""Runs a one-head, one-example attention function over a batch: `vmap`.

Pure JAX (no Trax import); the batching behind `lsh_jax.trax`.

Shapes (the package glossary): B batch, N heads, L length, Dm model depth,
P = B * N (example, head) pairs, numbered p = example * N + head as in
Trax's layer state. A *block* is B' examples x N' heads computed at once
(B' * N' = Trax's `n_parallel_heads`, all P pairs by default).

`head_fn(x [L, Dm], mask [L] or None, w_h, s_h) -> (out [L', Dm], new_s_h)`
computes one head of one example (L' = L, except in decoding, where x is
the layer's memory and the output covers the new tokens only).
`forward_and_or_backward` vmaps it over the N' heads and B' examples of a
block and sums the heads. Blocks run one
after another in a `lax.fori_loop` (one block: no loop). With `output_grad`
it returns gradients too, taking each block's vjp right after recomputing
its forward pass, so no block's intermediates outlive it (Trax's [FW-BW-1]
order): the memory of one block, not of the whole batch.
"""
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ['block_shape', 'forward_and_or_backward']


def block_shape(batch, n_heads, n_parallel_heads):
  """(B', N'): examples and heads per block for Trax's `n_parallel_heads`.

  None, 0 or anything >= B * N gives one block with every pair. Otherwise
  a block holds whole examples (a multiple of N pairs) or a divisor of N
  heads of one example, as in Trax.
  """
  total = batch * n_heads
  size = total
  if n_parallel_heads and n_parallel_heads < total:
    size = n_parallel_heads
  if size >= n_heads:
    if size % n_heads or batch % (size // n_heads):
      raise ValueError(
          f'n_parallel_heads={n_parallel_heads} with n_heads={n_heads} needs a '
          f'batch size that is a multiple of {size // n_heads}, got {batch}')
    return size // n_heads, n_heads
  if n_heads % size:
    raise ValueError(f'n_parallel_heads={n_parallel_heads} must divide '
                     f'n_heads={n_heads} when it is smaller')
  return 1, size


def _slice(tree, start, size):
  return jax.tree_util.tree_map(
      lambda a: lax.dynamic_slice_in_dim(a, start, size, axis=0), tree)


def _add_at(tree, start, update):
  """tree[start:start + len(update)] += update, for every leaf."""
  def add(a, u):
    old = lax.dynamic_slice_in_dim(a, start, u.shape[0], axis=0)
    return lax.dynamic_update_slice_in_dim(a, old + u, start, axis=0)
  return jax.tree_util.tree_map(add, tree, update)


def _set_at(tree, start, update):
  return jax.tree_util.tree_map(
      lambda a, u: lax.dynamic_update_slice_in_dim(a, u, start, axis=0),
      tree, update)


def _vmap(fn):
  """`jax.vmap(fn)`, except over an axis of size 1: then fn itself on the
  squeezed arguments. (Trax's default, one pair per block, would otherwise
  give every op of the attention two unit batch axes, and XLA:CPU's library
  reductions run ~6x slower on [1, 1, L, D] than on [L, D].)"""
  def mapped(*args):
    sizes = {a.shape[0] for a in jax.tree_util.tree_leaves(args)}
    if sizes != {1}:
      return jax.vmap(fn)(*args)
    squeezed = jax.tree_util.tree_map(lambda a: a[0], args)
    return jax.tree_util.tree_map(lambda a: a[None], fn(*squeezed))
  return mapped


def _block_forward(head_fn, x_blk, mask_blk, w_blk, s_blk):
  """One block: x [B', L, Dm], w leaves [N', ...], s leaves [B', N', ...].

  Returns (out [B', L', Dm] summed over the N' heads, new_s leaves
  [B', N', ...]).
  """
  def one_example(x_e, mask_e, s_e):
    heads = _vmap(lambda w_h, s_h: head_fn(x_e, mask_e, w_h, s_h))
    out, new_s = heads(w_blk, s_e)  # [N', L', Dm]
    # N' - 1 adds, not a reduce over the head axis: XLA:CPU hands that
    # reduce (and its transpose, a broadcast to [N', L', Dm]) to a library
    # call that took longer than the block's attention (4 heads, L 2K,
    # d_model 256: 166 ms against 95 ms in a per-op profile).
    return functools.reduce(jnp.add, list(out)), new_s
  if mask_blk is None:
    return _vmap(lambda x_e, s_e: one_example(x_e, None, s_e))(x_blk, s_blk)
  return _vmap(one_example)(x_blk, mask_blk, s_blk)


class _Blocks(NamedTuple):
  """The block geometry: N heads; B' examples x N' heads per block."""
  n_heads: int
  n_examples: int
  n_block_heads: int

  @property
  def size(self):
    """P' = B' * N' pairs per block."""
    return self.n_examples * self.n_block_heads


class _Sums(NamedTuple):
  """What the loop over blocks accumulates (None where not asked for)."""
  out: jax.Array  # [B, L', Dm], the blocks' outputs
  state: Any  # leaves [P, ...], the new state, or None
  x_grad: Any  # like x, or None
  w_grad: Any  # like weights, or None


def _run_block(i, head_fn, x, mask, weights, state, output_grad, blocks):
  """Block i's forward pass, and its vjp right after it if `output_grad`.

  Returns:
    ((example, head, pair) where the block starts, out [B', L', Dm], new
    state leaves [P', ...], (x_grad, weights_grad) of the block or None).
  """
  first = i * blocks.size
  example, head = first // blocks.n_heads, first % blocks.n_heads
  n_ex, n_hd = blocks.n_examples, blocks.n_block_heads
  x_blk = _slice(x, example, n_ex)
  mask_blk = None if mask is None else _slice(mask, example, n_ex)
  s_blk = jax.tree_util.tree_map(
      lambda s: s.reshape((n_ex, n_hd) + s.shape[1:]),
      _slice(state, first, blocks.size))
  w_blk = _slice(weights, head, n_hd)
  forward = lambda x_blk, w_blk: _block_forward(head_fn, x_blk, mask_blk,
                                                w_blk, s_blk)
  if output_grad is None:
    out, new_s = forward(x_blk, w_blk)
    grads = None
  else:
    out, vjp_fn, new_s = jax.vjp(forward, x_blk, w_blk, has_aux=True)
    grads = vjp_fn(_slice(output_grad, example, n_ex))
  new_s = jax.tree_util.tree_map(
      lambda s: s.reshape((blocks.size,) + s.shape[2:]), new_s)
  return (example, head, first), out, new_s, grads


def _zero_sums(run_block, x, weights, batch, n_heads, update_state,
               with_grads):
  """The loop's starting `_Sums`: zeros of the full batch's shapes."""
  zeros = lambda tree: jax.tree_util.tree_map(jnp.zeros_like, tree)
  # The new state may differ in shape from the old one (buckets follow L),
  # and the output from x (decoding reads a memory, returns new positions).
  out_shape, new_state_shape = jax.eval_shape(lambda: run_block(0)[1:3])
  state = None
  if update_state:
    state = jax.tree_util.tree_map(
        lambda s: jnp.zeros((batch * n_heads,) + s.shape[1:], s.dtype),
        new_state_shape)
  return _Sums(
      out=jnp.zeros((batch,) + out_shape.shape[1:], out_shape.dtype),
      state=state, x_grad=zeros(x) if with_grads else None,
      w_grad=zeros(weights) if with_grads else None)


def _add_block(sums, starts, out, new_s, grads):
  """`sums` with one block's results added (outputs and gradients) or set
  (the state) at the block's place."""
  example, head, first = starts
  sums = sums._replace(out=_add_at(sums.out, example, out))
  if sums.state is not None:
    sums = sums._replace(state=_set_at(sums.state, first, new_s))
  if grads is not None:
    sums = sums._replace(x_grad=_add_at(sums.x_grad, example, grads[0]),
                         w_grad=_add_at(sums.w_grad, head, grads[1]))
  return sums


def forward_and_or_backward(head_fn, x, mask, weights, state, *, n_heads,
                            n_parallel_heads=None, output_grad=None,
                            update_state=True):
  """Batched forward pass and/or backward pass of `head_fn`.

  Args:
    head_fn: the one-head function (module docstring).
    x: float[B, L, Dm] activations, or a tuple of such arrays (every leaf
      [B, ...]; `head_fn` gets one example of each).
    mask: bool[B, L] (True = real token) or None.
    weights: pytree, every leaf [N, ...] (one slice per head).
    state: pytree, every leaf [P, ...] (one slice per pair).
    n_heads: N.
    n_parallel_heads: pairs per block (see `block_shape`).
    output_grad: float[B, L, Dm] cotangent of the output, or None.
    update_state: return the new state (else `state` is returned as is).

  Returns:
    (out [B, L, Dm], new_state, x_grad [B, L, Dm] or None, weights_grad or
    None).
  """
  batch = jax.tree_util.tree_leaves(x)[0].shape[0]
  blocks = _Blocks(n_heads, *block_shape(batch, n_heads, n_parallel_heads))
  run_block = functools.partial(
      _run_block, head_fn=head_fn, x=x, mask=mask, weights=weights,
      state=state, output_grad=output_grad, blocks=blocks)
  n_blocks = batch * n_heads // blocks.size
  if n_blocks == 1:
    _, out, new_s, grads = run_block(0)
    x_grad, w_grad = (None, None) if grads is None else grads
    return out, (new_s if update_state else state), x_grad, w_grad
  sums = lax.fori_loop(
      0, n_blocks, lambda i, sums: _add_block(sums, *run_block(i)),
      _zero_sums(run_block, x, weights, batch, n_heads, update_state,
                 with_grads=output_grad is not None))
  return (sums.out, sums.state if update_state else state, sums.x_grad,
          sums.w_grad)
