"""Sequence-parallel checks on 8 devices; prints a JSON report line.

Run by tests/test_sequence_parallel.py in subprocesses, because the device
count is fixed before JAX starts:

  python scripts/sequence_parallel_check.py attention   # 8 host devices
  python scripts/sequence_parallel_check.py model       # 8 host devices
  python scripts/sequence_parallel_check.py worker ID PORT
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


def attention_report(full=False):
  """Outputs, dropout, gradients and errors of the head exchange; `full`
  adds more ways to ask and device counts (each one more compilation)."""
  assert jax.device_count() == 8, jax.devices()
  q, v, mask, hash_key, drop_key, cot_key = _inputs()
  attend = lambda q, v, **kw: lsh_jax.lsh_self_attention(
      q, v, hash_key=hash_key, mask=mask, **SETTINGS, **kw)
  expected = jax.jit(attend)(q, v)
  seq = Mesh(np.array(jax.devices()), ('seq',))
  explicit = jax.make_mesh((8,), ('seq',))  # Explicit axis types
  grid = Mesh(np.array(jax.devices()).reshape(2, 4), ('data', 'seq'))
  report = {'explicit_axis_types': str(explicit.axis_types)}
  # No keywords: the axis is read from the inputs' NamedSharding.
  sharded = NamedSharding(seq, P(None, 'seq'))
  outputs = {
      'explicit_mesh_jit': jax.jit(lambda q, v: attend(
          q, v, mesh=explicit, sequence_axis='seq'))(q, v),
      'data_x_seq_mesh': attend(q, v, mesh=grid, sequence_axis='seq',
                                batch_axis='data'),
      'read_from_sharding': attend(jax.device_put(q, sharded),
                                   jax.device_put(v, sharded)),
  }
  if full:
    outputs['auto_mesh_jit'] = jax.jit(lambda q, v: attend(
        q, v, mesh=seq, sequence_axis='seq'))(q, v)
    with jax.set_mesh(explicit):
      typed = [jax.device_put(x, P(None, 'seq')) for x in (q, v)]
      outputs['read_from_explicit_type_jit'] = jax.jit(attend)(*typed)
  report['bit_identical'] = {name: bool(np.array_equal(out, expected))
                             for name, out in outputs.items()}
  report['out_specs'] = {name: str(out.sharding.spec)
                         for name, out in outputs.items()}
  if full:  # unbatched [T, N, H]: N pairs over a 4-device sequence axis
    four = Mesh(np.array(jax.devices()[:4]), ('seq',))
    one = lsh_jax.lsh_self_attention(q[0], v[0], hash_key=hash_key,
                                     **SETTINGS)
    report['unbatched_bit_identical'] = bool(np.array_equal(
        lsh_jax.lsh_self_attention(q[0], v[0], hash_key=hash_key,
                                   mesh=four, sequence_axis='seq',
                                   **SETTINGS), one))
  # Long enough (R * T = 1024) for the rounds to run in turn: a scan whose
  # carry starts from zeros inside the exchange.
  long_q, long_v = (jnp.tile(x, (1, 8, 1, 1)) for x in (q, v))
  report['rounds_in_turn_bit_identical'] = bool(np.array_equal(
      lsh_jax.lsh_self_attention(long_q, long_v, hash_key=hash_key,
                                 mesh=seq, sequence_axis='seq', **SETTINGS),
      lsh_jax.lsh_self_attention(long_q, long_v, hash_key=hash_key,
                                 **SETTINGS)))
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
  # Gradients: vjp with a fixed cotangent, at 8 devices (full: 2, 4, 8).
  cotangent = jax.random.normal(cot_key, (B, T, N, HV))

  def vjp(**kw):
    return jax.vjp(lambda q, v: attend(q, v, **kw), q, v)[1](cotangent)

  expected_grads = jax.jit(vjp)()
  report['grads'] = {}
  for d in (2, 4, 8) if full else (8,):
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
          kw['q'], kw['v'], hash_key=hash_key, mesh=kw['mesh'],
          sequence_axis=kw.get('axis', 'seq'), **SETTINGS)
      errors[name] = None
    except ValueError as error:
      errors[name] = str(error)
  report['errors'] = errors
  # Read from the sharding alone, sizes the exchange cannot split: no
  # error, XLA partitions the one-device program as before.
  few = [jax.device_put(x[:1, :, :2], sharded) for x in (q, v)]
  report['fallback_bit_identical'] = bool(np.array_equal(
      lsh_jax.lsh_self_attention(*few, hash_key=hash_key, **SETTINGS),
      lsh_jax.lsh_self_attention(q[:1, :, :2], v[:1, :, :2],
                                 hash_key=hash_key, **SETTINGS)))
  return report


# A small pure-JAX language model (core tier: no Flax): embeddings, one
# pre-norm block of LSH self-attention and a ReLU feed-forward, a softmax
# head. Everything but the attention is position-wise, so on a
# sequence-sharded batch it runs on each device's own positions.
V, DM, DFF = 11, 16, 32


def init_params(key):
  keys = jax.random.split(key, 7)
  normal = lambda k, shape: 0.3 * jax.random.normal(k, shape)
  return dict(embed=normal(keys[0], (V, DM)), pos=normal(keys[1], (T, DM)),
              qk=normal(keys[2], (DM, N, H)), v=normal(keys[3], (DM, N, HV)),
              out=normal(keys[4], (N, HV, DM)), ff1=normal(keys[5], (DM, DFF)),
              ff2=normal(keys[6], (DFF, DM)))


def _norm(x):
  x = x - jnp.mean(x, -1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6)


def loss_fn(params, tokens, hash_key, **layout):
  """Next-token cross-entropy of tokens int[B, T]; `layout`: the
  attention's mesh=, sequence_axis=, batch_axis= (or nothing)."""
  x = params['embed'][tokens] + params['pos']  # [B, T, Dm]
  h = _norm(x)
  qk = jnp.einsum('btf,fnh->btnh', h, params['qk'])
  v = jnp.einsum('btf,fnh->btnh', h, params['v'])
  att = lsh_jax.lsh_self_attention(qk, v, hash_key=hash_key, **SETTINGS,
                                   **layout)
  x = x + jnp.einsum('btnh,nhf->btf', att, params['out'])
  x = x + jax.nn.relu(_norm(x) @ params['ff1']) @ params['ff2']
  logits = _norm(x) @ params['embed'].T  # [B, T, V], tied embeddings
  targets = jnp.roll(tokens, -1, axis=1)
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], -1))


def train_step(params, tokens, hash_key, **layout):
  """One SGD step: (loss, new params)."""
  loss, grads = jax.value_and_grad(loss_fn)(params, tokens, hash_key,
                                            **layout)
  return loss, jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)


def _tokens():
  return jax.random.randint(jax.random.PRNGKey(7), (B, T), 0, V)


def _step_diffs(loss, params, expected_loss, expected_params):
  return dict(
      loss=float(loss), expected_loss=float(expected_loss),
      loss_rel=abs(float(loss) - float(expected_loss)) / abs(
          float(expected_loss)),
      loss_bit_identical=bool(float(loss) == float(expected_loss)),
      params_max_rel=max(_max_rel(params[k], expected_params[k])
                         for k in expected_params),
      params_bit_identical=all(bool(np.array_equal(params[k],
                                                   expected_params[k]))
                               for k in expected_params))


def model_report():
  """One training step on a data x seq mesh of 8 host devices."""
  assert jax.device_count() == 8, jax.devices()
  params, tokens = init_params(jax.random.PRNGKey(1)), _tokens()
  hash_key = jax.random.PRNGKey(2)
  expected = jax.jit(train_step)(params, tokens, hash_key)
  grid = Mesh(np.array(jax.devices()).reshape(2, 4), ('data', 'seq'))
  layout = dict(mesh=grid, sequence_axis='seq', batch_axis='data')
  step = jax.jit(lambda p, t, k: train_step(p, t, k, **layout))
  tokens = jax.device_put(tokens, NamedSharding(grid, P('data', 'seq')))
  loss, new = step(params, tokens, hash_key)
  return _step_diffs(loss, new, *expected)


def worker_report(process_id, port):
  """One of 2 processes x 4 CPU devices: the attention over a 1-D mesh of
  the 8 global devices and one training step on a (data=2) x (seq=4) mesh
  whose two axes both cross the processes; expected values: the same calls
  on this process's first device alone."""
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.config.update('jax_num_cpu_devices', 4)
  jax.distributed.initialize(f'127.0.0.1:{port}', num_processes=2,
                             process_id=process_id,
                             initialization_timeout=60)
  devices = jax.devices()
  report = dict(process_index=jax.process_index(),
                process_count=jax.process_count(),
                global_devices=len(devices),
                local_devices=len(jax.local_devices()))
  here = jax.local_devices()[0]
  q, v, mask, hash_key, _, _ = _inputs()

  def global_array(x, sharding):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])

  def local_equal(out, expected):
    """Every shard this process holds equals its slice of `expected`."""
    expected = np.asarray(expected)
    return all(bool(np.array_equal(np.asarray(s.data), expected[s.index]))
               for s in out.addressable_shards)

  attend = lambda q, v, m, **kw: lsh_jax.lsh_self_attention(
      q, v, hash_key=hash_key, mask=m, **SETTINGS, **kw)
  expected = jax.jit(attend)(*jax.device_put((q, v, mask), here))
  line = Mesh(np.array(devices), ('seq',))
  spec = NamedSharding(line, P(None, 'seq'))
  out = jax.jit(lambda q, v, m: attend(q, v, m, mesh=line,
                                       sequence_axis='seq'))(
      global_array(q, spec), global_array(v, spec), global_array(mask, spec))
  report['attention_bit_identical'] = local_equal(out, expected)
  report['attention_shards_here'] = len(out.addressable_shards)

  params, tokens = init_params(jax.random.PRNGKey(1)), _tokens()
  step_key = jax.random.PRNGKey(2)
  expected = jax.jit(train_step)(*jax.device_put((params, tokens, step_key),
                                                 here))
  grid = Mesh(np.array(devices).reshape(4, 2).T, ('data', 'seq'))
  layout = dict(mesh=grid, sequence_axis='seq', batch_axis='data')
  replicated = NamedSharding(grid, P())
  # Replicated outputs: every process holds the whole loss and parameters.
  loss, new = jax.jit(lambda p, t, k: train_step(p, t, k, **layout),
                      out_shardings=replicated)(
      jax.tree.map(lambda x: global_array(x, replicated), params),
      global_array(tokens, NamedSharding(grid, P('data', 'seq'))),
      global_array(step_key, replicated))
  local = lambda x: np.asarray(x.addressable_shards[0].data)
  report.update(_step_diffs(local(loss), jax.tree.map(local, new),
                            *expected))
  report['mesh_crosses_processes'] = [
      sorted({d.process_index for d in row}) for row in grid.devices]
  jax.distributed.shutdown()
  return report


if __name__ == '__main__':
  which = sys.argv[1]
  if which == 'attention':
    result = attention_report(full='--full' in sys.argv)
  elif which == 'model':
    result = model_report()
  elif which == 'worker':
    result = worker_report(int(sys.argv[2]), int(sys.argv[3]))
  else:
    raise SystemExit(f'unknown check {which!r}')
  print('REPORT ' + json.dumps(result))
