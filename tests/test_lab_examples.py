"""The course lab's worked examples, as the lab printed them.

Expected values are the lab's published outputs ("Reformer Efficient
Attention" ungraded lab, NLP specialisation course 4 week 4, run on Trax
1.3.4 / JAX in 2020), copied verbatim from a learner's executed notebook
(SupratikSaha/Natural-Language-Processing-with-Attention-Models,
`Week 4/C4_W4_Ungraded_Lab_Reformer_LSH.ipynb`, commit 372807f), whose
numbers agree digit for digit with the course's own "Expected Output"
blocks. Each example runs through the oracle and, where lsh_jax has a
function for that step, through the JAX code too. The lab drew its inputs
with pre-0.5 JAX random numbers: `old_threefry` reproduces them.

Tolerances: the lab printed float32 with 8 significant digits; 1e-6
absolute covers that printing. Where the lab's own float32 rounding shows
(0.99999905 for an exact 1), 2e-6 is used and said.
"""
import jax
import jax.numpy as jnp
import numpy as np

import lsh_jax
from lsh_jax import oracle

PRINT_ATOL = 1e-6  # 8 printed significant digits


def test_our_softmax():
  probs, lse = oracle.our_softmax(np.array([1.0, 2.0, 3.0, 4.0]))
  np.testing.assert_allclose(
      probs, [0.0320586, 0.08714431, 0.23688279, 0.64391416], atol=PRINT_ATOL)
  np.testing.assert_allclose(lse, [4.44019], atol=1e-5)  # printed 6 digits
  # The same softmax is lsh_jax's round weighting (docs/algorithm.md §5): four
  # "rounds" of one query with normalisers 1, 2, 3, 4.
  weights = lsh_jax.core.round_weights(jnp.array([[1.0], [2.0], [3.0], [4.0]]))
  np.testing.assert_allclose(weights[:, 0], probs, atol=PRINT_ATOL)


LAB_ATTEND_OUT = [
    [0.5606324, 0.7290605, 0.5251243, 0.47101074],
    [0.5713517, 0.71991956, 0.5033342, 0.46975708],
    [0.5622886, 0.7288458, 0.52172124, 0.46318397],
    [0.5568317, 0.72234154, 0.542236, 0.4699722],
    [0.56504494, 0.72274375, 0.5204978, 0.47231334],
    [0.56175965, 0.7216782, 0.53293145, 0.48003793],
    [0.56753993, 0.72232544, 0.5141734, 0.46625748],
    [0.57100445, 0.70785505, 0.5325362, 0.4590797],
]
LAB_ATTEND_LSE = [2.6512175, 2.1914332, 2.6630518, 2.7792363, 2.4583826,
                  2.5421977, 2.4145055, 2.5111294]


def test_our_simple_attend(old_threefry):
  """q = k = uniform(PRNGKey(1), (8, 3)), v = uniform(PRNGKey(1), (8, 4)).

  The lab passes k explicitly, so keys are only scaled by 1/sqrt(3): in
  lsh_jax that is `full_attention(q, v, k=q)` (separate keys, no masks).
  """
  rng = jax.random.PRNGKey(1)
  q = jax.random.uniform(rng, (8, 3), dtype=jnp.float32)
  v = jax.random.uniform(rng, (8, 4), dtype=jnp.float32)
  out, lse = oracle.our_simple_attend(np.asarray(q), np.asarray(q),
                                      np.asarray(v))
  np.testing.assert_allclose(out, LAB_ATTEND_OUT, atol=PRINT_ATOL)
  np.testing.assert_allclose(lse, LAB_ATTEND_LSE, atol=PRINT_ATOL)
  np.testing.assert_allclose(lsh_jax.full_attention(q, v, k=q),
                             LAB_ATTEND_OUT, atol=PRINT_ATOL)


def test_our_hash_vectors(old_threefry):
  """ones((8, 5)), 4 buckets, 3 hashes, get_prng(1) on the JAX backend."""
  expected = [3] * 8 + [5] * 8 + [11] * 8  # flat, with round offsets 0, 4, 8
  vecs = jnp.ones((8, 5))
  rng = jax.random.PRNGKey(1)
  rotations = lsh_jax.core.random_rotations(rng, 5, 4, 3)
  np.testing.assert_array_equal(
      oracle.our_hash_vectors(np.asarray(vecs), np.asarray(rotations), 4, 3),
      expected)
  buckets = lsh_jax.hash_vectors(vecs, hash_key=rng, n_buckets=4,
                                 n_hashes=3)  # [3, 8], no offsets
  offsets = 4 * np.arange(3)[:, None]
  np.testing.assert_array_equal((np.asarray(buckets) + offsets).ravel(),
                                expected)


LAB_STICKER = [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]
LAB_UNDO_SORT = [0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15]


def sort_example():
  """The lab's sort_buckets inputs: L=8, 2 hashes, 4 buckets."""
  q = (np.arange(8) % 4)[:, None] * np.ones((8, 3))
  v = np.ones((8, 5))
  buckets = np.array([(j % 4) + 4 * i for i in range(2) for j in range(8)])
  return q, v, buckets


def test_sort_buckets():
  q, v, buckets = sort_example()
  sq, sv, sticker, undo_sort = oracle.sort_buckets(buckets, q, v, 4, 2, 8)
  np.testing.assert_array_equal(sticker, LAB_STICKER)
  np.testing.assert_array_equal(undo_sort, LAB_UNDO_SORT)
  # Printed sq: each of 0, 1, 2, 3 twice, per round.
  np.testing.assert_array_equal(sq[:, 0], [0, 0, 1, 1, 2, 2, 3, 3] * 2)
  np.testing.assert_array_equal(sv, np.ones((16, 5)))
  # lsh_jax keeps rounds on a leading axis: flat sticker = h * L + position.
  j_sticker, j_undo = lsh_jax.core.sort_buckets(jnp.asarray(buckets).reshape(2, 8))
  offsets = 8 * np.arange(2)[:, None]
  np.testing.assert_array_equal((np.asarray(j_sticker) + offsets).ravel(),
                                LAB_STICKER)
  np.testing.assert_array_equal((np.asarray(j_undo) + offsets).ravel(),
                                LAB_UNDO_SORT)


def test_dotandv_passthrough_and_softmax():
  """dotandv with kv_chunk_len=2: softmax passed through, then applied."""
  q, v, buckets = sort_example()
  sq, sv, _, undo_sort = oracle.sort_buckets(buckets, q, v, 4, 2, 8)
  passthrough = oracle.dotandv(sq, sv, undo_sort, 2, 2, 8, True)
  np.testing.assert_allclose(passthrough,
                             np.repeat([[0.], [6.], [24.], [54.]] * 2, 5, 1),
                             atol=PRINT_ATOL)
  applied = oracle.dotandv(sq, sv, undo_sort, 2, 2, 8, False)
  # The lab printed 0.99999905 for rows 2, 3, 6, 7: its float32 rounding of
  # an exact 1 (every value is 1), hence 2e-6 here.
  lab = np.repeat([[1.], [1.], [0.99999905], [0.99999905]] * 2, 5, 1)
  np.testing.assert_allclose(applied, lab, atol=2e-6)
