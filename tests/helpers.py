"""Helpers shared by the test modules."""
import jax
import jax.numpy as jnp
import numpy as np


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
