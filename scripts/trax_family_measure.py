"""Prints the largest output and gradient differences of lsh_jax's Trax
family against Trax 1.4.1 over the test cases (docs/trax_family.md).

  PYTHONPATH=$PWD python scripts/trax_family_measure.py

Gradient differences are relative to the largest entry of each gradient.
Not a test: a script that imports the test modules' cases (from tests/).
"""
# pylint: disable=protected-access,import-outside-toplevel
import os
import sys
import types

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'tests'))

import test_trax_family_encdec as encdec_tests  # noqa: E402
import test_trax_family_pure as pure_tests  # noqa: E402
import test_trax_family_self_attention as sa_tests  # noqa: E402
import trax_testing  # noqa: E402


def rel_grad(got, expected):
  return max(float(np.max(np.abs(np.asarray(g) - np.asarray(e)))) /
             max(float(np.max(np.abs(np.asarray(e)))), 1e-30)
             for g, e in zip(jax.tree_util.tree_leaves(got),
                             jax.tree_util.tree_leaves(expected)))


def out_diff(a, b, valid=None):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if valid is not None:
    a, b = a[valid], b[valid]
  return float(np.max(np.abs(a - b)))


def main():
  from trax import fastmath, shapes
  from trax import layers as tl
  from trax.layers.research import efficient_attention as ea

  from lsh_jax.trax import encdec, layers, pure
  env = types.SimpleNamespace(tl=tl, shapes=shapes, fastmath=fastmath,
                              ours=layers)
  rng = jax.random.PRNGKey(3)
  rows = []
  worst = {}
  for case, kwargs in sa_tests.CASES.items():
    inputs = sa_tests._inputs(kwargs)
    theirs, ours = trax_testing.init_pair(env, 'SelfAttention', kwargs,
                                          inputs)
    if kwargs.get('bias'):
      sa_tests._random_biases(theirs, ours)
    x = inputs[0] if isinstance(inputs, tuple) else inputs
    cot = jax.random.normal(jax.random.PRNGKey(4), x.shape)
    e = trax_testing.run_with_grads(theirs, inputs, rng, cot)
    g = trax_testing.run_with_grads(ours, inputs, rng, cot)
    rows.append(('SelfAttention', case, out_diff(g[0], e[0]),
                 rel_grad(g[2:], e[2:])))
  for case, kwargs in pure_tests.CASES.items():
    kwargs = dict(kwargs, d_qk=pure_tests.D_QK, d_v=pure_tests.D_V)
    inputs = pure_tests._pair_inputs(kwargs)
    theirs = pure_tests._init(ea.PureLSHSelfAttention(**kwargs), env, inputs)
    ours = pure_tests._init(pure.PureLSHSelfAttention(**kwargs), env, inputs)
    shape = inputs[1].shape
    valid = (np.repeat(pure_tests._valid(), kwargs['n_heads'], axis=0)
             if kwargs.get('masked') else np.ones(shape[:2], bool))
    cot = jax.random.normal(jax.random.PRNGKey(4), shape) * valid[..., None]
    e = pure_tests._run_pure(theirs, inputs, rng, cot)
    g = pure_tests._run_pure(ours, inputs, rng, cot)
    rows.append(('PureLSHSelfAttention', case, out_diff(g[0], e[0], valid),
                 rel_grad(g[2], e[2])))
  for name, kwargs in (('plain', dict(n_heads=2, d_qk=3, d_v=4)),
                       ('dropout', dict(n_heads=3, d_qk=4, d_v=2,
                                        attention_dropout=0.3,
                                        output_dropout=0.2))):
    inputs = encdec_tests._activations()
    kwargs = dict(kwargs, masked=False)
    theirs = encdec_tests._init(tl.EncDecAttention(**kwargs), env, inputs)
    ours = encdec_tests._init(encdec.EncDecAttention(**kwargs), env, inputs)
    cot = jax.random.normal(jax.random.PRNGKey(4), (2, 6, 5))
    e = encdec_tests._run(theirs, inputs, rng, cot)
    g = encdec_tests._run(ours, inputs, rng, cot)
    rows.append(('EncDecAttention', name, out_diff(g[0], e[0]),
                 rel_grad(g[1], e[1])))
  print(f'{"class":<22} {"case":<28} {"max |out diff|":>15} '
        f'{"max grad diff/max":>18}')
  for cls, case, o, gr in rows:
    print(f'{cls:<22} {case:<28} {o:>15.2e} {gr:>18.2e}')
    w = worst.setdefault(cls, [0.0, 0.0])
    w[0], w[1] = max(w[0], o), max(w[1], gr)
  print()
  for cls, (o, gr) in worst.items():
    print(f'{cls:<22} worst: output {o:.2e}, gradient {gr:.2e}')


if __name__ == '__main__':
  main()
