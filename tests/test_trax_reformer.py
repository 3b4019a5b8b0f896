"""The layer inside trax.models.ReformerLM, and its memory-saving backward.

Expected values come from the same ReformerLM built with Trax 1.4.1's
LSHSelfAttention (same init key, inputs and rng), except the memory test,
which counts bytes against sizes derived from the shapes.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from trax_testing import assert_trees_close
from trax_testing import assert_trees_equal
from trax_testing import max_abs_diff
from trax_testing import trax_env  # noqa: F401  (fixture)


def reformer(env, attention_cls, mode):
  attention = functools.partial(
      attention_cls, chunk_len=8, n_hashes=2, n_buckets=4, n_chunks_before=1,
      max_length_for_buckets=32, n_parallel_heads=1)
  return env.models.ReformerLM(
      vocab_size=13, d_model=16, d_ff=32, d_attention_key=8,
      d_attention_value=8, n_layers=2, n_heads=2, dropout=0.1, max_len=64,
      attention_type=attention, mode=mode)


def test_reformer_lm_matches_trax_and_uses_our_backward(trax_env,
                                                        monkeypatch):
  """Outputs, state and weight gradients of a 2-layer ReformerLM in train
  mode (dropout on): reversible layers call our forward_and_or_backward
  with the output gradient and the stored buckets (update_state=False)."""
  ours_cls = trax_env.ours.LSHSelfAttention
  calls = []
  original = ours_cls.forward_and_or_backward

  def spy(self, inputs, weights, state, rng, output_grad=None, **kwargs):
    calls.append((output_grad is not None, kwargs.get('update_state', True)))
    return original(self, inputs, weights, state, rng,
                    output_grad=output_grad, **kwargs)

  monkeypatch.setattr(ours_cls, 'forward_and_or_backward', spy)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 32), 1, 13)
  models = [reformer(trax_env, trax_env.tl.LSHSelfAttention, 'train'),
            reformer(trax_env, ours_cls, 'train')]
  for model in models:
    model.init(trax_env.shapes.signature(tokens), rng=jax.random.PRNGKey(1))
  assert_trees_equal(models[1].weights, models[0].weights)
  assert_trees_equal(models[1].state, models[0].state)
  rng = jax.random.PRNGKey(7)
  cotangent = jax.random.normal(jax.random.PRNGKey(5), (2, 32, 13))

  def output_and_grads(model):
    def loss(weights):
      out, state = model.pure_fn(tokens, weights, model.state, rng)
      return jnp.sum(out * cotangent), (out, state)
    grad_fn = jax.value_and_grad(loss, has_aux=True)
    (_, (out, state)), grads = jax.jit(grad_fn)(model.weights)
    return out, state, grads

  expected = output_and_grads(models[0])
  got = output_and_grads(models[1])
  np.testing.assert_allclose(got[0], expected[0], rtol=0, atol=1e-5)
  assert_trees_equal(got[1], expected[1])
  # Measured: ~1.2e-5 absolute on entries up to ~7 (float32 sums).
  assert max_abs_diff(got[2], expected[2]) < 1e-4
  assert_trees_close(got[2], expected[2], rtol=2e-3, atol=5e-5)
  assert (True, False) in calls  # the reversible backward pass went through us


def test_custom_backward_keeps_only_inputs_output_and_buckets(trax_env):
  """What survives from the forward pass to the backward pass (the
  residuals of `jax.vjp`): with the custom backward pass only inputs,
  weights, output and state (buckets); attention is recomputed. Autodiff
  through the forward pass (use_reference_code=True) keeps at least every
  round's output in original order, R * L * d_v floats = 256 KiB here
  (L = 1024, 4 rounds, d_v = 16; the rounds' own VJPs already drop the
  chunk logits and the sorted copies); the input is 64 KiB."""
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 1024, 16))
  residual_bytes = []
  for reference in (False, True):
    layer = trax_env.ours.LSHSelfAttention(
        n_heads=1, d_qk=16, d_v=16, chunk_len=32, n_hashes=4,
        use_reference_code=reference)
    layer.init(trax_env.shapes.signature(x))

    def forward(x, weights, layer=layer):
      return layer.pure_fn(x, weights, layer.state, jax.random.PRNGKey(1))[0]

    _, vjp_fn = jax.vjp(forward, x, layer.weights)
    residual_bytes.append(sum(a.nbytes for a in
                              jax.tree_util.tree_leaves(vjp_fn)))
  custom, autodiff = residual_bytes
  assert custom < 4 * x.nbytes, residual_bytes
  assert autodiff > 4 * 1024 * 16 * 4, residual_bytes
