"""lsh_jax.trax.SelfAttention against Trax 1.4.1's SelfAttention.

Expected values come from Trax's own layer (same arguments, init key,
inputs and rng; `pure_fn` jitted, gradients through its backward pass) or
from the lab's printed numbers. Padding is kept away from positions 0-1 and
padded outputs are not compared (docs/algorithm.md §3).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_testing import assert_trees_close
from trax_testing import assert_trees_equal
from trax_testing import init_pair
from trax_testing import run_with_grads
from trax_testing import trax_env  # noqa: F401  (fixture)

OUT_ATOL = 1e-5
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-5  # <= 1.5e-6 absolute seen

CASES = {
    # Trax's defaults: separate keys, no chunks; causal, two examples.
    'separate_keys_causal': dict(n_heads=2, d_qk=3, d_v=4, causal=True),
    # Shared QK with padding: lsh_jax.full_attention.
    'shared_qk_masked': dict(n_heads=3, d_qk=4, d_v=2, share_qk=True,
                             masked=True),
    # Shared QK, chunked, both dropouts: one-bucket LSH attention.
    'shared_qk_chunked_dropout': dict(
        n_heads=2, d_qk=4, d_v=3, share_qk=True, chunk_len=4,
        n_chunks_before=1, n_chunks_after=1, attention_dropout=0.3,
        output_dropout=0.2, n_parallel_heads=1),
    # Separate keys with attention dropout (lsh_jax's own dense function).
    'separate_keys_dropout': dict(n_heads=1, d_qk=5, d_v=3, bias=True,
                                  attention_dropout=0.4),
}


@pytest.mark.parametrize('case', list(CASES))
def test_matches_trax_outputs_and_gradients(trax_env, case):
  kwargs = CASES[case]
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 12, 5))
  valid = np.ones(x.shape[:2], bool)
  inputs = x
  if kwargs.get('masked'):
    valid[0, 9:] = False
    valid[1, 4] = False
    inputs = (x, jnp.asarray(valid))
  trax_layer, our_layer = init_pair(trax_env, 'SelfAttention', kwargs, inputs)
  assert_trees_equal(our_layer.weights, trax_layer.weights)
  if kwargs.get('bias'):  # zeros at init: give the biases values
    weights = tuple(jax.random.normal(jax.random.PRNGKey(i), w.shape)
                    if w.ndim == 2 else w for i, w in
                    enumerate(trax_layer.weights))
    trax_layer.weights = our_layer.weights = weights

  rng = jax.random.PRNGKey(3)
  cotangent = jax.random.normal(jax.random.PRNGKey(4), x.shape) * valid[
      ..., None]
  expected = run_with_grads(trax_layer, inputs, rng, cotangent)
  got = run_with_grads(our_layer, inputs, rng, cotangent)
  np.testing.assert_allclose(np.asarray(got[0])[valid],
                             np.asarray(expected[0])[valid], rtol=0,
                             atol=OUT_ATOL)
  assert_trees_close(got[2:], expected[2:], rtol=GRAD_RTOL, atol=GRAD_ATOL)


def test_lab_example_prints_the_lab_output(trax_env, old_threefry):
  """The lab's OurSelfAttention cell (part 2, In[7]-[9]); expected values
  are the numbers the lab printed (collected in the project's lab notes)."""
  layer = trax_env.ours.SelfAttention(
      n_heads=3, d_qk=3, d_v=4, causal=False, use_reference_code=True,
      attention_dropout=0.0, mode='train')
  x = jax.random.uniform(jax.random.PRNGKey(0), (1, 8, 5), dtype=jnp.float32)
  layer.init(trax_env.shapes.signature(x),
             rng=trax_env.fastmath.random.get_prng(1))
  expected = [
      [6.70414209e-01, -1.04319841e-01, -5.33822298e-01, 1.92711830e-01,
       -4.54187393e-05],
      [6.64090097e-01, -1.01875424e-01, -5.35733163e-01, 1.88311756e-01,
       -6.30629063e-03],
      [6.73380017e-01, -1.06952369e-01, -5.31989932e-01, 1.90056816e-01,
       1.30271912e-03],
      [6.84564888e-01, -1.13240272e-01, -5.50182462e-01, 1.95673436e-01,
       5.47635555e-03],
      [6.81435883e-01, -1.11068964e-01, -5.32343209e-01, 1.91912338e-01,
       5.69400191e-03],
      [6.80724978e-01, -1.08496904e-01, -5.34994125e-01, 1.96332246e-01,
       5.89773059e-03],
      [6.80933356e-01, -1.14087075e-01, -5.18659890e-01, 1.90674081e-01,
       1.14096403e-02],
      [6.80265009e-01, -1.09031796e-01, -5.38248718e-01, 1.94203183e-01,
       4.23943996e-03]]
  np.testing.assert_allclose(layer(np.asarray(x))[0], expected, rtol=0,
                             atol=1e-6)


@pytest.mark.parametrize('kwargs,message', [
    (dict(chunk_len=0), 'chunk_len must be >= 1'),
    (dict(n_chunks_before=1), 'n_chunks_before and n_chunks_after need '
     'chunk_len'),
    (dict(mode='predict', chunk_len=4), "mode='predict' needs causal=True"),
    (dict(d_qk=0), 'd_qk must be >= 1'),
])
def test_constructor_errors(trax_env, kwargs, message):
  with pytest.raises(ValueError, match=message):
    trax_env.ours.SelfAttention(**kwargs)
