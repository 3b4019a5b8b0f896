"""Train the Flax copy model over 8 host devices, data x sequence parallel.

    PYTHONPATH=. python examples/train_sharded.py [--steps 300]
        [--data 2 --seq 4] [--no-compare] [--json]

A (data) x (seq) mesh of host CPU devices (`--xla_force_host_platform_
device_count`, set below before JAX starts; on a machine with accelerators
use its devices instead): every batch of `lsh_jax.apps.flax_copy` is
sharded B over 'data' and T over 'seq'; the embeddings, norms and
feed-forwards run on each device's own positions, and each attention
layer exchanges heads over 'seq' (docs/scaling.md). Then (unless
--no-compare) the same training on one device, and the differences of the
two loss curves; and (--rounding) a third run on one device whose learning
rate is one float32 ulp larger: how far a rounding-level change alone
moves the curve, the yardstick for "equal within float rounding" (training
amplifies rounding differences step after step).
"""
import argparse
import json
import os
import sys

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument('--steps', type=int, default=300)
parser.add_argument('--data', type=int, default=2, help="the 'data' axis")
parser.add_argument('--seq', type=int, default=4, help="the 'seq' axis")
parser.add_argument('--log-every', type=int, default=50)
parser.add_argument('--no-compare', action='store_true',
                    help='skip the one-device run')
parser.add_argument('--rounding', action='store_true',
                    help='also a one-device run with the learning rate one '
                    'ulp larger')
parser.add_argument('--json', action='store_true',
                    help='print the two loss curves as a JSON line')
args = parser.parse_args()
os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') +
    f' --xla_force_host_platform_device_count={args.data * args.seq}')

import dataclasses  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from lsh_jax.apps import flax_copy  # noqa: E402

config = flax_copy.CopyConfig()
mesh = Mesh(np.array(jax.devices()[:args.data * args.seq]).reshape(
    args.data, args.seq), ('data', 'seq'))
out = open(os.devnull, 'w') if args.json else sys.stdout
print(f'{args.data} x {args.seq} mesh (data x seq) of '
      f'{jax.devices()[0].platform} devices, batch {config.batch_size} x '
      f'{config.length} tokens', file=out)
_, sharded = flax_copy.train(config, steps=args.steps, mesh=mesh,
                             sequence_axis='seq', batch_axis='data',
                             log_every=args.log_every, out=out)
result = dict(sharded=sharded)


def differences(curve, reference):
  """Relative differences per step, summarised."""
  rel = np.abs(np.subtract(curve, reference)) / np.abs(reference)
  above = np.nonzero(rel > 1e-5)[0]
  return dict(max_rel_diff=float(np.max(rel)),
              max_step=int(np.argmax(rel)) + 1,
              first_step_above_1e_5=int(above[0]) + 1 if len(above) else None,
              first_rel_diff=float(rel[0]),
              bit_identical_steps=int(np.sum(rel == 0)))


def describe(name, d):
  first = d['first_step_above_1e_5']
  print(f"{name}: largest relative difference {d['max_rel_diff']:.2e} "
        f"(step {d['max_step']}); {d['bit_identical_steps']} of "
        f"{args.steps} steps bit-identical; first above 1e-5: "
        f"{'none' if first is None else f'step {first}'}", file=out)


if not args.no_compare:
  print('one device:', file=out)
  _, single = flax_copy.train(config, steps=args.steps,
                              log_every=args.log_every, out=out)
  result.update(single=single, **differences(sharded, single))
  describe('sharded vs one device', result)
  if args.rounding:
    lr = float(np.nextafter(np.float32(config.learning_rate), np.float32(1)))
    print(f'one device, learning rate {lr!r} (one ulp up):', file=out)
    _, nudged = flax_copy.train(
        dataclasses.replace(config, learning_rate=lr), steps=args.steps,
        log_every=args.log_every, out=out)
    result.update(rounding=nudged, rounding_diff=differences(nudged, single))
    describe('one ulp of learning rate vs one device',
             result['rounding_diff'])
if args.json:
  print('REPORT ' + json.dumps(result))
