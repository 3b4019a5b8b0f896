"""Compiled per-device memory of sequence-parallel LSH attention and training.

  python benchmarks/scaling_memory.py                   # 64K, 256K, 1M
  python benchmarks/scaling_memory.py --lengths 64K --devices 1,2 --markdown

Compiles (never runs) each program on D = 1, 2, 4, 8 host devices
(`--xla_force_host_platform_device_count`, set before JAX starts) and
prints `memory_analysis()` per device: arguments, outputs, temporaries
(XLA's buffer assignment: exact and noise-free). D = 1 is the unsharded
call; D > 1 shards the length T over a 'seq' mesh axis and exchanges heads
(`lsh_self_attention(..., mesh=, sequence_axis=)`). Two programs:

  attention  `lsh_self_attention`, B 1, 8 heads of 64 (values 64), 4
             rounds, chunk 64; forward, and forward+backward (the
             gradients of <out, cotangent> in q and v).
  model      the Flax copy model (`lsh_jax.apps.flax_copy.copy_model`:
             a reversible ReformerLM, 2 layers of LSH attention and a
             FastGelu feed-forward, d_model 64, 8 heads of 8, Dff 128, 2
             rounds, chunk 64), B 1: the loss (forward), and one Adam step
             (forward+backward+update). Leaves with a leading [T] axis are
             sharded over 'seq' like the tokens; the other parameters are
             replicated.

Checks printed under the table (`checks`): the attention's arguments and
outputs (all position-wise) are 1/D of D = 1's within 5%, and its
temporaries at most those of one device running the same P/D pairs
unsharded (the 'pairs/D on 1' rows) plus the exchanged inputs; the
training step's temporaries are 1/D within 5%.
Compiled at XLA backend optimisation level 0 unless --opt: LLVM's passes
do not change buffer assignment (checked: the attention at 64K, D = 1,
forward and forward+backward, the same bytes at both levels) and cost
most of the compile time.
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--lengths', default='64K,256K,1M')
  p.add_argument('--devices', default='1,2,4,8')
  p.add_argument('--what', default='attention,model')
  p.add_argument('--markdown', action='store_true',
                 help='a Markdown table (for docs and `make bench`)')
  p.add_argument('--json', help='also write the rows to this file')
  p.add_argument('--opt', action='store_true',
                 help='compile at the default XLA optimisation level')
  return p.parse_args(argv)


ARGS = parse_args() if __name__ == '__main__' else None
if ARGS is not None:
  count = max(int(d) for d in ARGS.devices.split(','))
  os.environ['XLA_FLAGS'] = (
      os.environ.get('XLA_FLAGS', '') +
      f' --xla_force_host_platform_device_count={count}' +
      ('' if ARGS.opt else ' --xla_backend_optimization_level=0'))
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  sys.path[:0] = [HERE, os.path.dirname(HERE)]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

HEADS, DEPTH, HASHES, CHUNK = 8, 64, 4, 64
MIB = 2**20


def _abstract(shape, dtype, mesh, spec):
  sharding = None if mesh is None else NamedSharding(mesh, spec)
  return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def _memory(fn, *args):
  analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
  return dict(arguments=analysis.argument_size_in_bytes / MIB,
              outputs=analysis.output_size_in_bytes / MIB,
              temporaries=analysis.temp_size_in_bytes / MIB)


def attention_programs(length, mesh, heads=HEADS):
  """{'fwd': (fn, args), 'fwd+bwd': ...} of the attention on `mesh`."""
  import lsh_jax  # pylint: disable=import-outside-toplevel
  layout = {} if mesh is None else dict(mesh=mesh, sequence_axis='seq')
  shape = (1, length, heads, DEPTH)
  q, v, ct = (_abstract(shape, jnp.float32, mesh, P(None, 'seq'))
              for _ in range(3))
  key = jax.random.PRNGKey(0)

  def forward(q, v):
    return lsh_jax.lsh_self_attention(q, v, hash_key=key, n_hashes=HASHES,
                                      chunk_len=CHUNK, **layout)

  def grads(q, v, ct):
    return jax.grad(lambda q, v: jnp.vdot(forward(q, v), ct),
                    argnums=(0, 1))(q, v)
  return {'fwd': (forward, (q, v)), 'fwd+bwd': (grads, (q, v, ct))}


def model_programs(length, mesh):
  """The copy model's loss and one Adam step on `mesh` (B 1)."""
  # pylint: disable=import-outside-toplevel
  import optax
  from flax import nnx

  from lsh_jax.apps import flax_copy
  config = flax_copy.CopyConfig(length=length, d_model=64, d_ff=128,
                                n_heads=HEADS, d_head=8, n_layers=2,
                                n_hashes=2, chunk_len=CHUNK, batch_size=1)
  layout = {} if mesh is None else dict(mesh=mesh, sequence_axis='seq')
  abstract = nnx.eval_shape(lambda: flax_copy.copy_model(
      config, rngs=nnx.Rngs(0), **layout))
  abstract.eval()  # the fixed hash key: no rng state to update in jit
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  tx = optax.adam(1e-3)

  def place(tree):  # [T, ...] leaves sharded over 'seq', the rest copied
    spec = lambda x: P('seq') if x.ndim and x.shape[0] == length else P()
    return jax.tree.map(lambda x: _abstract(x.shape, x.dtype, mesh, spec(x)),
                        tree)
  params, rest = place(params), place(rest)
  opt_state = place(jax.eval_shape(tx.init, params))
  tokens = _abstract((1, length), jnp.int32, mesh, P(None, 'seq'))
  weights = _abstract((1, length), jnp.float32, mesh, P(None, 'seq'))

  def loss(params, rest, tokens, weights):
    model = nnx.merge(graphdef, params, rest)
    logits = model(tokens)  # ReformerLM shifts right itself
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)
    return jnp.sum(losses * weights) / jnp.sum(weights)

  def step(params, opt_state, rest, tokens, weights):
    value, grads = jax.value_and_grad(loss)(params, rest, tokens, weights)
    updates, opt_state = tx.update(grads, opt_state, params)
    return value, optax.apply_updates(params, updates), opt_state
  return {'fwd': (loss, (params, rest, tokens, weights)),
          'fwd+bwd': (step, (params, opt_state, rest, tokens, weights))}


PROGRAMS = {'attention': attention_programs, 'model': model_programs}


def measure(what, lengths, device_counts):
  """One row per (what, T, D, mode), plus the attention's 'pairs/D on 1'."""
  rows = []
  for length in lengths:
    for d in device_counts:
      mesh = None if d == 1 else Mesh(np.array(jax.devices()[:d]), ('seq',))
      programs = PROGRAMS[what](length, mesh)
      for mode, (fn, args) in programs.items():
        rows.append(dict(what=what, length=length, devices=d, mode=mode,
                         **_memory(fn, *args)))
        print(_line(rows[-1]), file=sys.stderr, flush=True)
      if what == 'attention' and d > 1:  # one device, the pairs of one of D
        for mode, (fn, args) in attention_programs(
            length, None, heads=HEADS // d).items():
          rows.append(dict(what='attention, pairs/D on 1', length=length,
                           devices=d, mode=mode, **_memory(fn, *args)))
  return rows


def _line(r):
  return (f"{r['what']} T={_fmt(r['length'])} D={r['devices']} {r['mode']}: "
          f"arguments {r['arguments']:.1f}, outputs {r['outputs']:.1f}, "
          f"temporaries {r['temporaries']:.1f} MiB")


def _fmt(length):
  return f'{length // 2**20}M' if length >= 2**20 else f'{length // 1024}K'


def checks(rows):
  """The claims, per (program, T, mode, D > 1); returns (lines, all hold).

  attention: arguments and outputs (q, v, cotangent; outputs, gradients:
  all position-wise) x D equal one device's within 5%; temporaries at most
  those of one device running the same P/D pairs plus the exchanged copies
  of the inputs (the size of the arguments). model, training step:
  temporaries (the activations kept for the backward pass) x D within 5%
  of one device's. Shown, not checked: the model's arguments and outputs
  (they hold the replicated parameters too) and its forward's temporaries
  (one pair's attention working set at the whole length, the same on every
  D, plus a position-wise part that is 1/D).
  """
  base = {(r['what'], r['length'], r['mode']): r for r in rows
          if r['devices'] == 1}
  pairs = {(r['length'], r['mode'], r['devices']): r for r in rows
           if r['what'] == 'attention, pairs/D on 1'}
  lines, ok = [], True
  for r in rows:
    if r['devices'] == 1 or r['what'] == 'attention, pairs/D on 1':
      continue
    one, d = base[(r['what'], r['length'], r['mode'])], r['devices']
    head = f"{r['what']} T={_fmt(r['length'])} D={d} {r['mode']}:"
    ratio = {f: r[f] * d / one[f] for f in ('arguments', 'outputs',
                                            'temporaries') if one[f] > 1e-3}
    checked = (('arguments', 'outputs') if r['what'] == 'attention'
               else ('temporaries',) if r['mode'] == 'fwd+bwd' else ())
    ok &= all(abs(ratio[f] - 1) <= 0.05 for f in checked if f in ratio)
    lines.append(head + ' x D / one device: ' + ', '.join(
        f"{f} {x:.3f}{'' if f in checked else ' (not checked)'}"
        for f, x in ratio.items()))
    if r['what'] == 'attention':
      same = pairs[(r['length'], r['mode'], d)]
      excess = r['temporaries'] - same['temporaries']
      ok &= excess <= r['arguments'] + 0.01 * same['temporaries']
      lines.append(f"{head} temporaries {r['temporaries']:.1f} MiB - "
                   f"{same['temporaries']:.1f} of one device running its "
                   f"P/D pairs = {excess:+.1f} (exchanged inputs: "
                   f"{r['arguments']:.1f})")
  return lines, ok


def markdown(rows):
  head = ('| program | T | D | mode | arguments MiB | outputs MiB | '
          'temporaries MiB |\n|---|---|---|---|---|---|---|')
  body = [f"| {r['what']} | {_fmt(r['length'])} | {r['devices']} | "
          f"{r['mode']} | {r['arguments']:.1f} | {r['outputs']:.1f} | "
          f"{r['temporaries']:.1f} |" for r in rows]
  return '\n'.join([head] + body)


def main(args):
  lengths = [int(x.upper().rstrip('KM')) *
             {'K': 1024, 'M': 2**20}.get(x.upper()[-1:], 1)
             for x in args.lengths.split(',')]
  devices = [int(d) for d in args.devices.split(',')]
  rows = []
  for what in args.what.split(','):
    rows += measure(what, lengths, devices)
  print(markdown(rows) if args.markdown else
        '\n'.join(_line(r) for r in rows))
  lines, ok = checks(rows)
  print('\n' + '\n'.join(lines))
  print(f"\nposition-wise memory 1/D within 5%, no temporaries beyond the "
        f"pairs' working set and the exchanged inputs: "
        f"{'yes' if ok else 'NO'}")
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f)


if __name__ == '__main__':
  main(ARGS)
