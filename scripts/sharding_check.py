"""Runs lsh_attention sharded over 8 host devices; prints a JSON report.

Run by tests/test_sharding.py in a subprocess, because the device count
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`) must be set before
JAX is imported. `python scripts/sharding_check.py [attention|trax]`.

The recipe (docs/reliability.md): vmap `lsh_attention` over heads and batch,
put the inputs on a `Mesh` over (batch, heads) with `NamedSharding`, and
jit: XLA partitions the program, each device attending its own (example,
head) pairs. `shard_map` does the same with the per-device program explicit.
"""
import json
import os
import sys

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import lsh_jax  # noqa: E402

BATCH, HEADS, LENGTH, D_QK, D_V = 2, 4, 60, 6, 5  # L padded inside to 64
SETTINGS = dict(n_buckets=4, n_hashes=2, chunk_len=16, n_chunks_after=1,
                causal=True)


def attention_check(grads=False):
  devices = jax.devices()
  assert len(devices) == 8, devices
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  q = jax.random.normal(keys[0], (BATCH, HEADS, LENGTH, D_QK))
  v = jax.random.normal(keys[1], (BATCH, HEADS, LENGTH, D_V))
  mask = jnp.arange(LENGTH)[None, :] < jnp.array([[LENGTH], [45]])  # [B, L]
  rngs = jax.random.split(keys[2], BATCH * HEADS).reshape(BATCH, HEADS, 2)

  def one_head(q, v, rng, mask):
    return lsh_jax.lsh_attention(q, v, hash_key=rng, mask=mask, **SETTINGS)

  # Heads share their example's mask: in_axes=None for it.
  per_example = jax.vmap(one_head, in_axes=(0, 0, 0, None))
  attend = jax.vmap(per_example)  # [B, H, L, ...]
  loss = lambda q, v, r, m: jnp.sum(jnp.sin(attend(q, v, r, m)))
  grad = jax.grad(loss, argnums=(0, 1))

  # One device: everything on device 0.
  one = jax.devices()[0]
  args_one = jax.device_put((q, v, rngs, mask), one)
  expected = jax.jit(attend)(*args_one)

  # Eight devices: a (batch=2) x (heads=4) mesh, one (example, head) pair
  # per device; the mask is split over batch and copied over heads.
  mesh = Mesh(np.array(devices).reshape(BATCH, HEADS), ('batch', 'heads'))
  pairs = NamedSharding(mesh, P('batch', 'heads'))
  examples = NamedSharding(mesh, P('batch'))
  args = (jax.device_put(q, pairs), jax.device_put(v, pairs),
          jax.device_put(rngs, pairs), jax.device_put(mask, examples))
  sharded = jax.jit(attend, out_shardings=pairs)(*args)

  # shard_map: the per-device program is the vmapped function on the local
  # [1, 1, L, ...] block.
  mapped = jax.jit(jax.shard_map(
      attend, mesh=mesh, in_specs=(P('batch', 'heads'),) * 3 + (P('batch'),),
      out_specs=P('batch', 'heads')))(*args)

  def diff(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))

  report = {}
  if grads:
    expected_grads = jax.jit(grad)(*args_one)
    sharded_grads = jax.jit(grad, out_shardings=(pairs, pairs))(*args)
    report['grads_max_diff'] = max(diff(a, b) for a, b in zip(
        sharded_grads, expected_grads))
  return dict(
      report, n_devices=len(devices),
      output_devices=len(sharded.sharding.device_set),
      shard_shape=list(sharded.addressable_shards[0].data.shape),
      jit_sharded_max_diff=diff(sharded, expected),
      jit_sharded_bit_identical=bool(np.array_equal(sharded, expected)),
      shard_map_max_diff=diff(mapped, expected),
      shard_map_bit_identical=bool(np.array_equal(mapped, expected)),
      finite=bool(np.all(np.isfinite(np.asarray(sharded)))))


def _patch_trax_for_jax_0_10():
  """Two Trax 1.4.1 multi-device calls that JAX 0.10 no longer accepts.

  1. `tl.for_n_devices` calls `jax.device_put_replicated`, removed in JAX
     0.10: replaced by n stacked copies, left uncommitted so that `pmap`
     places them.
  2. `Trainer` keeps the replicated optimizer slots `tl.on_cpu`, committed
     to CPU device 0; JAX 0.10's jit-based `pmap` refuses a committed
     argument whose sharding is not its own ("Sharding passed to jit does
     not match the sharding on the respective arg"). On the host platform
     every device is a CPU, so leaving them uncommitted changes nothing.
  Neither touches the attention layer: both fail before any layer runs.
  """
  from trax import layers as tl
  from trax.layers import acceleration
  jax.device_put_replicated = lambda x, devices: jnp.stack(
      [jnp.asarray(x)] * len(devices))
  acceleration.on_cpu = tl.on_cpu = lambda x: x


def trax_check(steps=3, n_devices=8):
  """A 1-layer ReformerLM with lsh_jax's layer, trained a few steps by
  Trax's Loop on 8 devices (Trax splits each batch across them)."""
  import functools
  import tempfile

  import trax
  from trax import layers as tl
  from trax.supervised import training

  from lsh_jax.trax import layers as trax_layer

  attention = functools.partial(
      trax_layer.LSHSelfAttention, chunk_len=8, n_hashes=2, n_buckets=4,
      n_chunks_before=1, attention_dropout=0.0)
  model = trax.models.ReformerLM(
      vocab_size=13, d_model=16, d_ff=32, d_attention_key=8,
      d_attention_value=8, n_layers=1, n_heads=2, dropout=0.0, max_len=64,
      attention_type=attention, mode='train')
  rng = np.random.default_rng(0)

  def batches():
    while True:
      tokens = rng.integers(1, 13, size=(16, 32)).astype(np.int32)
      yield tokens, tokens, np.ones_like(tokens, np.float32)

  task = training.TrainTask(
      labeled_data=batches(), loss_layer=tl.WeightedCategoryCrossEntropy(),
      optimizer=trax.optimizers.Adam(1e-3), n_steps_per_checkpoint=None)
  trax_error = None
  with tempfile.TemporaryDirectory() as output_dir:
    try:
      training.Loop(model, [task], output_dir=output_dir,
                    n_devices=n_devices, random_seed=0)
    except AttributeError as error:
      trax_error = str(error).split(';')[0]
      _patch_trax_for_jax_0_10()
    loop = training.Loop(model, [task], output_dir=output_dir,
                         n_devices=n_devices, random_seed=0)
    before = [np.array(w) for w in jax.tree_util.tree_leaves(model.weights)]
    loop.run(steps)
  after = [np.asarray(w) for w in jax.tree_util.tree_leaves(model.weights)]
  return dict(
      n_devices=loop.n_devices, jax_devices=jax.device_count(),
      steps=loop.step,
      weights_changed=sum(not np.array_equal(a, b)
                          for a, b in zip(before, after)),
      n_weights=len(after), trax_error_without_shim=trax_error,
      finite=all(bool(np.all(np.isfinite(a))) for a in after))


if __name__ == '__main__':
  which = sys.argv[1] if len(sys.argv) > 1 else 'attention'
  report = (attention_check(grads='--grads' in sys.argv)
            if which == 'attention' else trax_check())
  print('REPORT ' + json.dumps(report))
