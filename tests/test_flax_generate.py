"""lsh_jax.flax.ReformerLM decoding: decode=True, init_cache, generate.

Expected values: the same model without decoding, in evaluation mode, on
the whole sequence (full recomputation): its logits at every prefix
position, and its greedy tokens (the argmax of its logits, token by token,
each new token appended before the next call). Decoding computes the same
thing when the caches hold the whole sequence and every layer's attention
coincides with full attention: dense layers (SelfAttention and
LocalSelfAttention without chunks) always; an LSH layer when one chunk
spans the cache (chunk_len >= S, n_chunks_before=0), so that every round
of the full call sees every earlier token and a decoded token's
n_hashes * chunk_len candidates are the whole cache. Otherwise LSH differs
by design: a decoded token is hashed alone and attends to the positions
sharing its buckets (docs/decoding.md), not to its neighbours in its
sorted chunk.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lsh_jax.flax import LSHSelfAttention
from lsh_jax.flax import LocalSelfAttention
from lsh_jax.flax import ReformerLM
from lsh_jax.flax import SelfAttention
from lsh_jax.flax import generate

B, P, N_TOKENS, V = 2, 5, 8, 13
ONE_CHUNK = 16  # >= P + N_TOKENS: one LSH chunk spans the cache


@functools.lru_cache(maxsize=None)
def _model_state():
  types = [SelfAttention,
           functools.partial(LSHSelfAttention, chunk_len=ONE_CHUNK,
                             n_chunks_before=0, n_hashes=2, n_buckets=4),
           functools.partial(LocalSelfAttention, chunk_len=None)]
  model = ReformerLM(V, d_model=16, d_ff=32, d_attention_key=4,
                     d_attention_value=4, n_layers=3, n_heads=2,
                     dropout=0.1, max_len=32, attention_type=types,
                     rngs=nnx.Rngs(0))
  model.eval()
  return nnx.split(model)


def _model():
  return nnx.merge(*_model_state())


def _prefix(seed=1):
  return jax.random.randint(jax.random.key(seed), (B, P), 1, V)


def _greedy_by_recomputation(model, prefix, n_tokens):
  """The eval model on a fixed-length buffer after every token (one
  compilation; causal, so the zeros after the tokens so far are unseen)."""
  full = nnx.jit(lambda m, tokens: m(tokens))
  buffer = jnp.concatenate(
      [prefix, jnp.zeros((B, n_tokens), prefix.dtype)], axis=1)
  for t in range(P, P + n_tokens):
    buffer = buffer.at[:, t].set(jnp.argmax(full(model, buffer)[:, t], -1))
  return np.asarray(buffer[:, P:])


def test_prefix_logits_equal_the_full_model():
  model = _model()
  prefix = _prefix()
  full = np.asarray(model(prefix))  # position t predicts prefix[:, t]
  model.init_cache((B, P + N_TOKENS))
  inputs = jnp.concatenate([jnp.zeros((B, 1), jnp.int32), prefix[:, :-1]],
                           axis=1)  # the shift the full model makes
  got = np.asarray(model(inputs, decode=True))
  np.testing.assert_allclose(got, full, rtol=0, atol=1e-5)
  print(f'max |decode - full| logits: {np.max(np.abs(got - full)):.2e}')


def test_greedy_tokens_equal_full_recomputation():
  model = _model()
  prefix = _prefix()
  got = np.asarray(generate(model, prefix, N_TOKENS))
  want = _greedy_by_recomputation(_model(), prefix, N_TOKENS)
  np.testing.assert_array_equal(got, want)
  assert got.shape == (B, N_TOKENS) and got.dtype == np.int32


def test_sampling_follows_its_key_and_tends_to_greedy():
  model = _model()
  prefix = _prefix(seed=3)
  key = jax.random.key(7)
  first = np.asarray(generate(model, prefix, N_TOKENS, temperature=1.0,
                              key=key))
  again = np.asarray(generate(model, prefix, N_TOKENS, temperature=1.0,
                              key=key))
  other = np.asarray(generate(model, prefix, N_TOKENS, temperature=1.0,
                              key=jax.random.key(8)))
  np.testing.assert_array_equal(first, again)
  assert np.any(first != other)
  assert first.min() >= 0 and first.max() < V
  # At a tiny temperature the softmax is the argmax.
  np.testing.assert_array_equal(
      generate(model, prefix, N_TOKENS, temperature=1e-4, key=key),
      generate(model, prefix, N_TOKENS))


@pytest.mark.parametrize('call,match', [
    (lambda m: generate(m, _prefix(), 3, temperature=0.5),
     r'temperature > 0 samples: pass key='),
    (lambda m: generate(m, _prefix(), 28), r'the prefix \(5\) and n_tokens '
     r'\(28\) need 33 positions, more than the positional encoding has '
     r'\(32\)'),
    (lambda m: generate(m, _prefix().astype(jnp.float32), 3),
     'prefix must be an int array'),
    (lambda m: m(_prefix(), decode=True), 'call model.init_cache'),
])
def test_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call(_model())
