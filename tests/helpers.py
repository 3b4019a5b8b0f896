"""Helpers shared by the test modules."""
import doctest
import importlib
import pkgutil

import jax
import jax.numpy as jnp
import numpy as np

from lsh_jax import oracle
from lsh_jax.core import hashing


def random_qv(seed, length, d_qk, d_v, dtype=jnp.float32):
  """Deterministic float q [L, d_qk] and v [L, d_v]."""
  kq, kv = jax.random.split(jax.random.PRNGKey(seed))
  return (jax.random.normal(kq, (length, d_qk), dtype),
          jax.random.normal(kv, (length, d_v), dtype))


def hash_margin(q, rotations, factors):
  """Smallest float64 gap between the winning and runner-up hash scores.

  The float32 JAX hash and the float64 oracle can only disagree on a bucket
  when this gap is at float32 rounding level; tests skip such draws.
  """
  rotated = np.einsum('tf,fhb->htb', np.asarray(q, np.float64),
                      np.asarray(rotations, np.float64))
  margin, start = np.inf, 0
  for factor in factors:
    part = rotated[..., start:start + factor // 2]
    start += factor // 2
    scores = np.sort(np.concatenate([part, -part], -1), axis=-1)
    if scores.shape[-1] > 1:
      margin = min(margin, float(np.min(scores[..., -1] - scores[..., -2])))
  return margin


def identity_projections(d_qk, d_v):
  """Weights (w_q, w_v, w_o) with x = [q | v] -> q, v and o -> o exactly.

  Lets a Trax layer's `forward_unbatched` run on given q and v: products
  with 0 and 1 are exact in float32.
  """
  d_model = d_qk + d_v
  w_q = jnp.eye(d_model, d_qk)
  w_v = jnp.eye(d_model, d_v, k=-d_qk)
  w_o = jnp.eye(d_v)
  return w_q, w_v, w_o


# docs/algorithm.md §5, the float32 caveat: a query whose only unmasked
# candidate is itself (causal position 0) has logits near -1e5, where float32
# steps by 2**-7; its output and its rows of the gradients agree to ~1e-2.
SELF_ONLY_TOL = 2e-2


def assert_rows_close(got, want, *, rtol, atol, self_only_rows=(),
                      err_msg=''):
  """Rows `self_only_rows` (first axis) at SELF_ONLY_TOL, every other row at
  `rtol`/`atol`."""
  got, want = np.asarray(got), np.asarray(want)
  loose = np.zeros(want.shape[0], bool)
  loose[list(self_only_rows)] = True
  np.testing.assert_allclose(got[~loose], want[~loose], rtol=rtol, atol=atol,
                             err_msg=f'{err_msg} (rows at the normal '
                             'tolerance)')
  np.testing.assert_allclose(got[loose], want[loose], rtol=SELF_ONLY_TOL,
                             atol=SELF_ONLY_TOL,
                             err_msg=f'{err_msg} (self-only rows)')


# Decoding against the oracle: outputs within DECODE_ATOL, except prefix
# queries that saw only themselves in every round of some head (causal
# position 0, tokens whose buckets hold no earlier token): the float32
# caveat above, at DECODE_ONLY_SELF_ATOL.
DECODE_ATOL = 1e-5
DECODE_ONLY_SELF_ATOL = 1e-2

# The Flax decoding tests' LSH cases: name -> (module settings, cache
# length Lm, drop_len, total length, prefix length).
DECODE_CASES = {
    # A short prefix fills part of the cache; the steps roll it over.
    'short_prefix_rolls_over': (dict(
        chunk_len=4, n_chunks_before=1, n_hashes=2, n_buckets=4), 16, 8, 30,
                                5),
    # A long prefix (> Lm, not a multiple of chunk_len), factorised buckets,
    # three rounds; the steps roll the full cache over.
    'long_prefix_factorised': (dict(
        chunk_len=4, n_chunks_before=2, n_hashes=3, n_buckets=(2, 4)), 20, 6,
                               30, 26),
}


def oracle_decode(weights, hash_keys, x, prefix_len, **settings):
  """Decoding by the oracle, per example and head, heads summed.

  `lsh_jax.oracle.predict_prefix` on x[:, :prefix_len], then
  `predict_step` per token, with the rotations drawn from each pair's key.

  Args:
    weights: per-head (w_q [N, Dm, D], w_v [N, Dm, Dv], w_o [N, Dv, Dm]).
    hash_keys: raw keys uint32[B * N, 2], pair p = b * N + n.
    x: float[B, T, Dm].
    prefix_len: tokens in the first call.
    settings: n_buckets, n_hashes, chunk_len, n_chunks_before, mem_len,
      drop_len.

  Returns:
    (float64[B, T, Dm], bool[B, T] the prefix queries that saw only
    themselves in some head).
  """
  w_q, w_v, w_o = (np.asarray(w, np.float64) for w in weights)
  x = np.asarray(x)
  n_heads = w_q.shape[0]
  memory_args = dict(n_buckets=settings['n_buckets'],
                     chunk_len=settings['chunk_len'],
                     n_chunks_before=settings['n_chunks_before'])
  total = np.zeros(x.shape, np.float64)
  only_self = np.zeros(x.shape[:2], bool)
  for b in range(x.shape[0]):
    for h in range(n_heads):
      rotations = hashing.random_rotations(
          hash_keys[b * n_heads + h], w_q.shape[-1], settings['n_buckets'],
          settings['n_hashes'])
      head = (w_q[h], w_v[h], w_o[h])
      out, memory, lse = oracle.predict_prefix(
          x[b, :prefix_len], rotations, *head, mem_len=settings['mem_len'],
          drop_len=settings['drop_len'], return_lse=True, **memory_args)
      total[b, :prefix_len] += out
      only_self[b, :prefix_len] |= np.all(lse < -1e4, axis=0)
      for t in range(prefix_len, x.shape[1]):
        total[b, t] += oracle.predict_step(
            memory, x[b, t], rotations, *head,
            drop_len=settings['drop_len'], **memory_args)[0]
  return total, only_self


def assert_close_to_oracle(got, expected_and_only_self):
  """DECODE_ATOL; DECODE_ONLY_SELF_ATOL where a prefix query saw only
  itself. Returns the two max errors (normal, only-self)."""
  expected, only_self = expected_and_only_self
  got = np.asarray(got)
  np.testing.assert_allclose(got[only_self], expected[only_self], rtol=0,
                             atol=DECODE_ONLY_SELF_ATOL)
  np.testing.assert_allclose(got[~only_self], expected[~only_self], rtol=0,
                             atol=DECODE_ATOL)
  errors = np.max(np.abs(got - expected), axis=-1)
  return (float(np.max(errors[~only_self])),
          float(np.max(errors[only_self], initial=0.0)))


def package_modules(package):
  """The names of `package`'s modules (one level), sorted."""
  return sorted(f'{package.__name__}.{m.name}'
                for m in pkgutil.iter_modules(package.__path__))


def assert_doctests_pass(module_name):
  """Runs the `>>>` examples of one module; fails with doctest's report."""
  module = importlib.import_module(module_name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS,
                           raise_on_error=False, verbose=False)
  assert result.failed == 0, f'{module_name}: {result}'
