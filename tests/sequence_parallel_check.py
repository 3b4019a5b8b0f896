"""Sequence-parallel checks on 8 devices; prints a JSON report line.

Run by tests/test_sequence_parallel.py in subprocesses, because the device
count is fixed before JAX starts:

  python tests/sequence_parallel_check.py attention   # 8 host devices
  python tests/sequence_parallel_check.py model       # 8 host devices
  python tests/sequence_parallel_check.py worker ID PORT
      # one of 2 processes x 4 CPU devices (jax.distributed, gloo)

Expected values are always the same call on one device: the unsharded
`lsh_self_attention`, or the same small model's training step without a
mesh.
"""
import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
if sys.argv[1:2] != ['worker']:
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=8')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import lsh_jax  # noqa: E402

B, T, N, H, HV = 2, 64, 4, 6, 5
SETTINGS = dict(n_buckets=4, n_hashes=2, chunk_len=8, n_chunks_after=1,
                causal=True)


def _inputs():
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  q = jax.random.normal(keys[0], (B, T, N, H))
  v = jax.random.normal(keys[1], (B, T, N, HV))
  mask = jnp.arange(T)[None, :] < jnp.array([[T], [45]])  # [B, T]
  return q, v, mask, keys[2], keys[3], keys[4]


def _max_rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _collectives(compiled_text):
  return {op: compiled_text.count(f' {op}(') + compiled_text.count(
      f' {op}-start(') for op in ('all-to-all', 'all-gather', 'all-reduce',
                                  'collective-permute')}


def attention_report():
  """Outputs, dropout, gradients and errors of the head exchange."""
  assert jax.device_count() == 8, jax.devices()
  q, v, mask, hash_key, drop_key, cot_key = _inputs()
  attend = lambda q, v, **kw: lsh_jax.lsh_self_attention(
      q, v, hash_key, mask=mask, **SETTINGS, **kw)
  expected = jax.jit(attend)(q, v)
  seq = Mesh(np.array(jax.devices()), ('seq',))
  explicit = jax.make_mesh((8,), ('seq',))  # Explicit axis types
  grid = Mesh(np.array(jax.devices()).reshape(2, 4), ('data', 'seq'))
  report = {'explicit_axis_types': str(explicit.axis_types)}
  outputs = {
      'auto_mesh_eager': attend(q, v, mesh=seq, sequence_axis='seq'),
      'auto_mesh_jit': jax.jit(lambda q, v: attend(
          q, v, mesh=seq, sequence_axis='seq'))(q, v),
      'explicit_mesh_jit': jax.jit(lambda q, v: attend(
          q, v, mesh=explicit, sequence_axis='seq'))(q, v),
      'data_x_seq_mesh': attend(q, v, mesh=grid, sequence_axis='seq',
                                batch_axis='data'),
  }
  # No keywords: the axis is read from the inputs' NamedSharding.
  sharded = NamedSharding(seq, P(None, 'seq'))
  outputs['read_from_sharding'] = attend(jax.device_put(q, sharded),
                                         jax.device_put(v, sharded))
  with jax.set_mesh(explicit):
    typed = [jax.device_put(x, P(None, 'seq')) for x in (q, v)]
    outputs['read_from_explicit_type_jit'] = jax.jit(attend)(*typed)
  report['bit_identical'] = {name: bool(np.array_equal(out, expected))
                             for name, out in outputs.items()}
  report['out_specs'] = {name: str(out.sharding.spec)
                         for name, out in outputs.items()}
  # Unbatched [T, N, H]: N pairs over the 4-device sequence axis.
  four = Mesh(np.array(jax.devices()[:4]), ('seq',))
  one = lsh_jax.lsh_self_attention(q[0], v[0], hash_key, **SETTINGS)
  report['unbatched_bit_identical'] = bool(np.array_equal(
      lsh_jax.lsh_self_attention(q[0], v[0], hash_key, mesh=four,
                                 sequence_axis='seq', **SETTINGS), one))
  # Attention dropout: the dropout keys follow the pairs as the hash keys.
  drop = dict(attention_dropout=0.25, dropout_key=drop_key)
  report['dropout_bit_identical'] = bool(np.array_equal(
      attend(q, v, mesh=seq, sequence_axis='seq', **drop),
      jax.jit(lambda q, v: attend(q, v, **drop))(q, v)))
  # The compiled program: only all_to_alls move activations (never an
  # all-gather of the sequence).
  lowered = jax.jit(lambda q, v: attend(
      q, v, mesh=seq, sequence_axis='seq')).lower(q, v)
  report['forward_collectives'] = _collectives(lowered.compile().as_text())
  # Gradients: vjp with a fixed cotangent, at 2, 4 and 8 devices.
  cotangent = jax.random.normal(cot_key, (B, T, N, HV))

  def vjp(**kw):
    return jax.vjp(lambda q, v: attend(q, v, **kw), q, v)[1](cotangent)

  expected_grads = jax.jit(vjp)()
  report['grads'] = {}
  for d in (2, 4, 8):
    mesh = Mesh(np.array(jax.devices()[:d]), ('seq',))
    grads = jax.jit(lambda: vjp(mesh=mesh, sequence_axis='seq'))()
    report['grads'][d] = dict(
        bit_identical=[bool(np.array_equal(a, b))
                       for a, b in zip(grads, expected_grads)],
        max_rel=max(_max_rel(a, b) for a, b in zip(grads, expected_grads)))
  # Sizes the exchange cannot split: a clear error.
  errors = {}
  for name, kw in (('pairs', dict(q=q[:1, :, :2], v=v[:1, :, :2],
                                  mesh=seq)),
                   ('length', dict(q=q[:, :60], v=v[:, :60], mesh=seq)),
                   ('axis', dict(q=q, v=v, mesh=seq, axis='sequence'))):
    try:
      lsh_jax.lsh_self_attention(
          kw['q'], kw['v'], hash_key, mesh=kw['mesh'],
          sequence_axis=kw.get('axis', 'seq'), **SETTINGS)
      errors[name] = None
    except ValueError as error:
      errors[name] = str(error)
  report['errors'] = errors
  return report


if __name__ == '__main__':
  which = sys.argv[1]
  if which == 'attention':
    result = attention_report()
  else:
    raise SystemExit(f'unknown check {which!r}')
  print('REPORT ' + json.dumps(result))
