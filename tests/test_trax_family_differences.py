"""The deliberate differences from Trax 1.4.1 listed in docs/trax_family.md
(the EncDecAttention mask: tests/test_trax_family_encdec.py).

Expected values: Trax's own layers, run on inputs with the padding removed
by hand (an independent derivation of "padding never attended").
"""
import jax
import jax.numpy as jnp
import numpy as np

from trax_testing import init_pair
from trax_testing import trax_env  # noqa: F401  (fixture)

OUT_ATOL = 1e-5


def test_padding_at_position_1_is_masked(trax_env):
  """SelfAttention, separate keys, no chunks, not causal: with position 1
  padded lsh_jax equals Trax's unmasked layer on the sequence without
  position 1; Trax's masked layer still attends to position 1."""
  kwargs = dict(n_heads=2, d_qk=3, d_v=4, masked=True)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 8, 5))
  valid = jnp.asarray([[True, False] + [True] * 6])
  theirs, ours = init_pair(trax_env, 'SelfAttention', kwargs, (x, valid))
  plain = trax_env.tl.SelfAttention(**dict(kwargs, masked=False))
  kept = jnp.concatenate([x[:, :1], x[:, 2:]], axis=1)
  plain.init(trax_env.shapes.signature(kept),
             rng=trax_env.fastmath.random.get_prng(1))
  plain.weights = theirs.weights
  rng = jax.random.PRNGKey(3)
  expected, _ = plain.pure_fn(kept, plain.weights, plain.state, rng)
  got, _ = ours.pure_fn((x, valid), ours.weights, ours.state, rng)
  trax_out, _ = theirs.pure_fn((x, valid), theirs.weights, theirs.state, rng)
  rows = np.array([0, 2, 3, 4, 5, 6, 7])
  np.testing.assert_allclose(np.asarray(got)[:, rows], expected, rtol=0,
                             atol=OUT_ATOL)
  assert np.max(np.abs(np.asarray(trax_out)[:, rows] - expected)) > 1e-3


def test_lsh_padded_queries_output_zeros(trax_env):
  """LSHSelfAttention: padded positions output exactly 0 (Trax computes a
  value there); real positions agree with Trax (padding not at 0-1)."""
  kwargs = dict(n_heads=2, d_qk=4, d_v=3, masked=True, chunk_len=4,
                n_buckets=4)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 12, 5))
  valid = jnp.arange(12)[None] < 9
  theirs, ours = init_pair(trax_env, 'LSHSelfAttention', kwargs, (x, valid))
  ours.state = theirs.state
  rng = jax.random.PRNGKey(3)
  got, _ = ours.pure_fn((x, valid), ours.weights, ours.state, rng)
  trax_out, _ = theirs.pure_fn((x, valid), theirs.weights, theirs.state, rng)
  np.testing.assert_array_equal(np.asarray(got)[:, 9:], 0.0)
  assert np.min(np.abs(np.asarray(trax_out)[:, 9:]).sum(-1)) > 1e-3
  np.testing.assert_allclose(np.asarray(got)[:, :9],
                             np.asarray(trax_out)[:, :9], rtol=0,
                             atol=OUT_ATOL)
