"""Sequence-parallel LSH self-attention by head exchange (Ulysses style).

Activations [B, T, N, H] whose length T is sharded over a mesh axis of
size D (each device holds [B, T/D, N, H]) are attended without any device
holding the whole sequence of every head:

  1. one `all_to_all` over the sequence axis turns each device's
     [B, T/D, N, H] into whole sequences [P/D, T, H] for P/D of the
     P = B * N (example, head) pairs (device i gets pairs i*P/D ...);
  2. each device runs the one-device per-pair attention on its pairs
     (`multihead.attend_pairs`), with the hash and dropout keys those pairs
     get in the unsharded call (`head_keys`, sliced by device);
  3. one `all_to_all` sends the outputs [P/D, T, Hv] back to the
     sequence-sharded layout [B, T/D, N, Hv].

Each pair's arithmetic is the one-device program's, so the outputs are
bit-identical to an unsharded call (tests/test_sharding.py). A batch axis
of the mesh may shard B as well (a 2-D data x sequence mesh): each batch
shard exchanges its own B/Db examples' pairs over the sequence axis.

The exchange needs (B/Db) * N divisible by D; with fewer pairs than
devices, see docs/scaling.md ("Fewer pairs than devices").
Runs on JAX's own runtime: `jax.shard_map` and `jax.lax.all_to_all`, on one
process or across `jax.distributed` processes alike.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lsh_jax.core import pairs as pairs_lib

__all__ = [
    'AxisName', 'exchange_from_pairs', 'exchange_to_pairs',
    'head_exchange_attention', 'Layout', 'resolve_layout',
]

AxisName = str | tuple[str, ...] | None


class Layout(NamedTuple):
  """Where the sequence (and optionally the batch) axis is sharded."""
  mesh: object  # jax.sharding.Mesh or AbstractMesh: hashable, static
  sequence_axis: str
  batch_axis: AxisName


def _axis_size(mesh, axis):
  names = axis if isinstance(axis, tuple) else (axis,)
  return int(np.prod([mesh.shape[name] for name in names if name]))


def _input_sharding(x):
  """The NamedSharding `x` carries (a committed array, or a tracer under
  an explicit mesh), else None."""
  sharding = getattr(x, 'sharding', None) if isinstance(x, jax.Array) and (
      not isinstance(x, jax.core.Tracer)) else None
  if sharding is None:
    try:
      sharding = jax.typeof(x).sharding
    except (AttributeError, TypeError):
      return None
  if isinstance(sharding, NamedSharding) and not sharding.mesh.empty:
    return sharding
  return None


def resolve_layout(query, *, mesh=None, sequence_axis=None, batch_axis=None,
                   batched=True) -> Layout | None:
  """The head-exchange layout of `lsh_self_attention`'s call, or None.

  `mesh` and `sequence_axis` come from the arguments or, when not given,
  from the query's NamedSharding (its spec on the T axis); `batch_axis`
  from the argument or that spec's B entry. None: the call is not
  sequence-parallel (also when the layout was only read from the
  sharding and the exchange cannot split its sizes: then XLA partitions
  the one-device program, as without this module).

  Raises:
    ValueError: an axis not in the mesh, a mesh without an axis, or sizes
      the exchange cannot split when mesh= or sequence_axis= asked for it,
      naming them.
  """
  asked = mesh is not None or sequence_axis is not None
  sharding = _input_sharding(query)
  spec = tuple(sharding.spec) if sharding is not None else ()
  t_axis = 1 if batched else 0
  spec = spec + (None,) * (t_axis + 1 - len(spec))
  if mesh is None and sequence_axis is None:
    if sharding is None or spec[t_axis] is None:
      return None  # the common case: not sequence-sharded
  if mesh is None:
    if sharding is None:
      raise ValueError(f'sequence_axis={sequence_axis!r} needs mesh= (the '
                       f'jax.sharding.Mesh it names an axis of), or a query '
                       f'sharded with a NamedSharding')
    mesh = sharding.mesh
  if sequence_axis is None:
    if sharding is None or spec[t_axis] is None:
      raise ValueError('mesh= needs sequence_axis= (the mesh axis the length '
                       'T is sharded over)')
    sequence_axis = spec[t_axis]
  if isinstance(sequence_axis, tuple):
    if len(sequence_axis) != 1:
      raise ValueError(f'sequence_axis must be one mesh axis name, got '
                       f'{sequence_axis!r}')
    sequence_axis = sequence_axis[0]
  if batch_axis is not None and not batched:
    raise ValueError(f'batch_axis={batch_axis!r} needs a batched query '
                     f'[B, T, N, H], got shape {np.shape(query)}')
  if batch_axis is None and batched and sharding is not None and (
      sharding.mesh.axis_names == mesh.axis_names):
    batch_axis = spec[0]
  names = tuple(mesh.axis_names)
  for what, axis in (('sequence_axis', sequence_axis),
                     ('batch_axis', batch_axis)):
    for name in (axis if isinstance(axis, tuple) else (axis,)):
      if name is not None and name not in names:
        raise ValueError(f'{what} {name!r} is not an axis of the mesh (axes '
                         f'{names})')
  if sequence_axis in (batch_axis if isinstance(batch_axis, tuple)
                       else (batch_axis,)):
    raise ValueError(f'batch_axis and sequence_axis must differ, both name '
                     f'{sequence_axis!r}')
  try:
    _check_sizes(np.shape(query), mesh, sequence_axis, batch_axis, batched)
  except ValueError:
    if asked:
      raise
    return None  # read from the sharding only: XLA partitions it as before
  return Layout(mesh, sequence_axis, batch_axis)


def _check_sizes(shape, mesh, sequence_axis, batch_axis, batched):
  batch, length, heads = (shape[:3] if batched else (1,) + shape[:2])
  d = _axis_size(mesh, sequence_axis)
  db = _axis_size(mesh, batch_axis) if batched else 1
  if length % d:
    raise ValueError(f'the length T={length} must be divisible by the size '
                     f'of sequence axis {sequence_axis!r} ({d})')
  if batch % db:
    raise ValueError(f'the batch B={batch} must be divisible by the size of '
                     f'batch axis {batch_axis!r} ({db})')
  pairs = batch // db * heads
  if pairs % d:
    per = f'B/{db}*N' if db > 1 else 'B*N'
    raise ValueError(
        f'the head exchange splits the (example, head) pairs over the '
        f'sequence axis: {per} = {batch // db}*{heads} = {pairs} must be '
        f'divisible by the size of sequence axis {sequence_axis!r} ({d}); '
        f'use a smaller sequence axis, more heads or a larger batch (fewer '
        f'pairs than devices: docs/scaling.md)')


def exchange_to_pairs(x: jax.Array, axis: str) -> jax.Array:
  """Per device: [B, T/D, N, ...] -> whole sequences [P/D, T, ...]."""
  return jax.lax.all_to_all(pairs_lib.to_pairs(x), axis, 0, 1,
                            tiled=True)


def exchange_from_pairs(x: jax.Array, axis: str, batch: int,
                        heads: int) -> jax.Array:
  """Per device: [P/D, T, ...] -> [B, T/D, N, ...], the inverse move."""
  x = jax.lax.all_to_all(x, axis, 1, 0, tiled=True)  # [P, T/D, ...]
  return pairs_lib.from_pairs(x, batch, heads)


def head_exchange_attention(query, value, keys, mask, dropout_keys, *,
                            layout: Layout, n_parallel_heads, **static):
  """`lsh_self_attention` on a sequence-sharded [B, T, N, H] (traced).

  Args:
    query: float[B, T, N, H]; value: float[B, T, N, Hv], T sharded over
      `layout.sequence_axis` (and B over `layout.batch_axis`, if any).
    keys, dropout_keys: the per-pair keys `head_keys(...)` [B, N], or None
      for dropout.
    mask: bool[B, T], bool[T] or None.
    layout: from `resolve_layout`.
    n_parallel_heads, **static: as for the one-device per-pair attention.

  Returns:
    float[B, T, N, Hv], sharded as the query.
  """
  mesh, axis, batch_axis = layout
  batch, length, heads = query.shape[:3]
  activations, per_example = P(batch_axis, axis), P(batch_axis)
  args, specs = [query, value, keys], [activations, activations, per_example]
  if mask is not None:
    args.append(jnp.broadcast_to(mask, (batch, length)))
    specs.append(activations)
  if dropout_keys is not None:
    args.append(dropout_keys)
    specs.append(per_example)
  if any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
    # Under an explicit mesh shard_map takes inputs already laid out as its
    # in_specs say; elsewhere (automatic axes) it reshards them itself.
    args = [jax.sharding.reshard(a, NamedSharding(mesh, s))
            for a, s in zip(args, specs)]

  def local(q, v, keys, *rest):  # q [B/Db, T/D, N, H] on each device
    rest = list(rest)
    local_mask = rest.pop(0) if mask is not None else None
    local_drop = rest.pop(0) if dropout_keys is not None else None
    b = q.shape[0]
    n_local = b * heads // jax.lax.axis_size(axis)
    first = jax.lax.axis_index(axis) * n_local
    own = lambda k: jax.lax.dynamic_slice_in_dim(
        pairs_lib.flat_keys(k), first, n_local)
    out = pairs_lib.attend_pairs(
        exchange_to_pairs(q, axis), exchange_to_pairs(v, axis), own(keys),
        _exchange_mask(local_mask, heads, axis),
        None if local_drop is None else own(local_drop),
        n_parallel_heads=n_parallel_heads, **static)  # [P/D, T, Hv]
    return exchange_from_pairs(out, axis, b, heads)

  # check_vma=False: the per-pair attention is written for one device (its
  # scans start from fresh zeros, which shard_map's type check would have
  # marked device-varying); every value inside varies over the sequence
  # axis anyway, as each device holds other pairs.
  return jax.shard_map(local, mesh=mesh, in_specs=tuple(specs),
                       out_specs=activations, check_vma=False)(*args)


def _exchange_mask(mask, heads, axis):
  """bool[B, T/D] -> the local pairs' bool[P/D, T]."""
  if mask is None:
    return None
  by_pair = pairs_lib.pair_mask(mask, heads)  # [P, T/D]
  return jax.lax.all_to_all(by_pair, axis, 0, 1, tiled=True)
