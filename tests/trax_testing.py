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
  """Trax's layers and models, and lsh_jax.trax_layer (Trax imported once)."""
  from trax import fastmath  # pylint: disable=import-outside-toplevel
  from trax import layers as tl
  from trax import models
  from trax import shapes

  from lsh_jax import trax_layer
  return types.SimpleNamespace(tl=tl, shapes=shapes, fastmath=fastmath,
                               models=models, ours=trax_layer)


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
