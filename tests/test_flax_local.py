"""lsh_jax.flax.LocalSelfAttention: Trax's SelfAttention (separate keys).

Expected values: softmax attention written out in NumPy per (example, head)
on the module's own projections: keys scaled by 1/sqrt(H), a query sees
itself and the earlier keys of its own chunk and of `n_chunks_before`
chunks back (causal), or every key (dense). Sizes: B=2, T=10 (not a
multiple of the chunk, so the module pads), F=12, N=2, H=4, Hv=3, out 10.
"""
import jax
import numpy as np
import pytest
from flax import nnx

from lsh_jax.flax import LocalSelfAttention

B, T, F, N, H, HV = 2, 10, 12, 2, 4, 3


def _expected(module, x, visible):
  q, k, v = (np.asarray(p(x), np.float64)
             for p in (module.qk, module.key, module.value))
  out = np.zeros((B, T, N, HV))
  for b in range(B):
    for n in range(N):
      logits = q[b, :, n] @ k[b, :, n].T / np.sqrt(H)
      logits = np.where(visible, logits, -np.inf)
      probs = np.exp(logits - logits.max(-1, keepdims=True))
      out[b, :, n] = probs / probs.sum(-1, keepdims=True) @ v[b, :, n]
  return module.out(out.astype(np.float32))


@pytest.mark.parametrize('chunk_len,before', [(None, 0), (4, 1), (3, 2)])
def test_equals_softmax_over_the_visible_keys(chunk_len, before):
  module = LocalSelfAttention(N, F, qk_features=N * H, v_features=N * HV,
                              out_features=10, causal=True,
                              chunk_len=chunk_len, n_chunks_before=before,
                              rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.PRNGKey(1), (B, T, F))
  i, j = np.arange(T)[:, None], np.arange(T)[None]
  visible = j <= i
  if chunk_len:
    visible &= j // chunk_len >= i // chunk_len - before
  got = module(x, deterministic=True)
  assert got.shape == (B, T, 10)
  np.testing.assert_allclose(got, _expected(module, x, visible), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(module(x[0]), got[0], rtol=1e-6, atol=1e-6)


def test_padded_keys_are_not_attended():
  module = LocalSelfAttention(N, F, qk_features=N * H, v_features=N * HV,
                              rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.PRNGKey(1), (B, T, F))
  mask = np.arange(T) < 7
  got = module(x, mask)
  visible = np.broadcast_to(mask[None], (T, T))
  np.testing.assert_allclose(got, _expected(module, x, visible), rtol=1e-5,
                             atol=1e-5)
