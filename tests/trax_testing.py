"""Shared set-up of the Trax-layer tests: one Trax import, paired layers.

Import the fixture into a test module with `from trax_testing import trax_env`.
"""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest


@pytest.fixture(scope='session')
def trax_env():
  """Trax's layers and models, and lsh_jax.trax (Trax imported once)."""
  from trax import fastmath  # pylint: disable=import-outside-toplevel
  from trax import layers as tl
  from trax import models
  from trax import shapes

  from lsh_jax.trax import layers as trax_layer
  return types.SimpleNamespace(tl=tl, shapes=shapes, fastmath=fastmath,
                               models=models, ours=trax_layer)


def lsh_head(x, mask, weights, state, *, spec, dropout_key, update_state):
  """One head of `LSHSelfAttention` on one example, projections inside.

  The per-pair form of the layer (as Trax computes it, pair by pair), the
  reference of `lsh_jax.trax.projected`, which takes the projections out of
  the loop over pairs.

  Returns:
    (out [L, Dm] before output dropout, new state).
  """
  from lsh_jax.trax import kernels  # pylint: disable=import-outside-toplevel
  q, _, v, w_o = kernels.project(x, weights, spec)
  o, state = kernels.lsh_attend(q, v, mask, state, spec=spec,
                                dropout_key=dropout_key,
                                update_state=update_state)
  return o @ w_o, state


def init_pair(env, name, kwargs, inputs, seed=1):
  """Trax's layer `name` and ours, built with `kwargs`, same init key."""
  layers = (getattr(env.tl, name)(**kwargs), getattr(env.ours, name)(**kwargs))
  for layer in layers:
    layer.init(env.shapes.signature(inputs),
               rng=env.fastmath.random.get_prng(seed))
  return layers


def run_with_grads(layer, inputs, rng, cotangent):
  """(output, new_state, d/dx, d/dweights) of sum(output * cotangent).

  Runs the layer's `pure_fn` under `jax.jit` (Trax's `layer(x)` is not
  jitted) with the layer's current weights and state; gradients go through
  the layer's own backward pass when it has one.
  """
  masked = isinstance(inputs, tuple)
  x = inputs[0] if masked else inputs

  def loss(x, weights):
    layer_inputs = (x,) + inputs[1:] if masked else x
    out, state = layer.pure_fn(layer_inputs, weights, layer.state, rng)
    return jnp.sum(out * cotangent), (out, state)

  grad_fn = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
  (_, (out, state)), (x_grad, w_grad) = jax.jit(grad_fn)(x, layer.weights)
  return out, state, x_grad, w_grad


def max_abs_diff(a, b):
  """Largest |a - b| over all leaves of two pytrees (float64)."""
  leaves = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
  return max(float(np.max(np.abs(np.asarray(u, np.float64) -
                                 np.asarray(v, np.float64)), initial=0.0))
             for u, v in leaves)


def assert_trees_close(actual, expected, *, rtol, atol):
  actual_leaves = jax.tree_util.tree_leaves(actual)
  expected_leaves = jax.tree_util.tree_leaves(expected)
  assert len(actual_leaves) == len(expected_leaves)
  for a, e in zip(actual_leaves, expected_leaves):
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol,
                               atol=atol)


def assert_trees_equal(actual, expected):
  assert (jax.tree_util.tree_structure(actual) ==
          jax.tree_util.tree_structure(expected))
  for a, e in zip(jax.tree_util.tree_leaves(actual),
                  jax.tree_util.tree_leaves(expected)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def old_jax_shim(fastmath):
  """Trax's `fastmath` with the two calls its decoding needs from old JAX.

  Trax 1.4.1's `_use_predict_mem` / `_incremental_forward_unbatched` call
  `lax.cond(pred=, true_operand=, true_fun=, false_operand=, false_fun=)`
  (keywords JAX removed) and branch in Python on
  `stop_gradient(seqlen)` (a Python int that old JAX returned unchanged).
  Test-only: the library never runs Trax's attention code.
  """
  def cond(*args, pred=None, true_operand=None, true_fun=None,
           false_operand=None, false_fun=None, **kwargs):
    if args:
      return jax.lax.cond(*args, **kwargs)
    return jax.lax.cond(pred, lambda ops: true_fun(ops[0]),
                        lambda ops: false_fun(ops[1]),
                        (true_operand, false_operand))

  def stop_gradient(x):
    return x if isinstance(x, int) else jax.lax.stop_gradient(x)

  names = {name: getattr(fastmath, name) for name in dir(fastmath)
           if not name.startswith('__')}
  return types.SimpleNamespace(**dict(names, cond=cond,
                                      stop_gradient=stop_gradient))


@pytest.fixture(scope='session')
def trax_decoding(trax_env):  # pylint: disable=redefined-outer-name
  """Trax's efficient_attention with `old_jax_shim` in place, then restored."""
  from trax.layers.research import efficient_attention  # pylint: disable=import-outside-toplevel
  original = efficient_attention.fastmath
  efficient_attention.fastmath = old_jax_shim(original)
  yield efficient_attention
  efficient_attention.fastmath = original


@pytest.fixture(scope='session')
def trained_run(trax_env, tmp_path_factory):  # pylint: disable=redefined-outer-name,unused-argument
  """The packaged lab_lsh_layer.gin trained 40 steps by `lsh-jax train`.

  Returns (run dir, printed lines). Session-scoped so every module that
  imports it shares one training run.
  """
  import contextlib  # pylint: disable=import-outside-toplevel
  import io  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel

  import gin  # pylint: disable=import-outside-toplevel

  from lsh_jax.apps import cli  # pylint: disable=import-outside-toplevel
  from lsh_jax.apps import commands  # pylint: disable=import-outside-toplevel
  config = os.path.join(commands.CONFIG_DIR, 'lab_lsh_layer.gin')
  run_dir = str(tmp_path_factory.mktemp('run'))
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    status = cli.main(['train', config, '--output-dir', run_dir, '--steps',
                       '40'])
  assert status == 0
  gin.clear_config()
  yield run_dir, printed.getvalue().splitlines()
  gin.clear_config()


def decode(layer, x, prefix_len):
  """A predict-mode layer on x [B, T, ...] (or a tuple of such arrays, the
  pure layer's (qk, v)): the prefix in one call, then one token per call.

  Returns:
    (outputs, one per call, as NumPy; states after each call).
  """
  step = jax.jit(layer.pure_fn)
  state, rng = layer.state, jax.random.PRNGKey(7)
  length = jax.tree_util.tree_leaves(x)[0].shape[1]
  outs, states = [], []
  calls = [(0, prefix_len)] + [(t, t + 1) for t in range(prefix_len, length)]
  for start, stop in calls:
    part = jax.tree_util.tree_map(lambda a: a[:, start:stop], x)
    out, state = step(part, layer.weights, state, rng)
    outs.append(np.asarray(out))
    states.append(state)
  return outs, states

