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
