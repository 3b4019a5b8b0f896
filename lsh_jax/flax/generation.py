"""Decoding the Flax `ReformerLM`: `decode=True`, `init_cache`, `generate`.

`model.init_cache((B, Lm))` gives every attention layer its cache of Lm
positions (`lsh_jax.flax.decoding`, Trax's `predict_mem_len`) and the
model a position counter; `model(tokens, decode=True)` then runs the model
on the next positions' *inputs*: no shift (as Trax's `ShiftRight` in predict
mode), the positional encoding at the decoding position, each reversible
block as `x1 += attention(norm(x2)); x2 += ff(norm(x1))` with the attention
reading and updating its cache, no dropout. The first call may carry a
prefix; then one token per call, at a cost that does not depend on how many
tokens came before.

`generate(model, prefix, n_tokens)` samples: the start symbol 0 and the
prefix in one call (`prefill`), then one compiled `step` per token, reused
(greedy with temperature 0, else softmax sampling at that temperature).

Shapes: B batch, P prefix length, T tokens per call, Lm cache length,
Dm d_model, V vocab_size.
"""
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lsh_jax.core import validation

__all__ = ['decode', 'generate', 'init_cache', 'prefill', 'step']


def init_cache(model, input_shape: Sequence[int], dtype=jnp.float32,
               drop_len: Optional[int] = None) -> None:
  """Caches for `model(tokens, decode=True)`; see `ReformerLM.init_cache`."""
  shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else ()
  if len(shape) != 2 or not all(isinstance(d, (int, np.integer)) and d >= 1
                                for d in shape):
    raise ValueError(f'input_shape must be (batch, cache length), positive '
                     f'ints, got {input_shape}')
  batch, mem_len = (int(d) for d in shape)
  for block in model.blocks:
    block.attention.init_cache((batch, mem_len, model.d_model), dtype,
                               drop_len=drop_len)
  model.cache = nnx.Cache(jnp.zeros((), jnp.int32))  # the next position


def decode(model, tokens: jax.Array, mask=None) -> jax.Array:
  """The model on the next inputs tokens int[B, T]: logits [B, T, V]."""
  if model.cache is None:
    raise ValueError('decode=True needs a cache: call '
                     'model.init_cache((batch, cache length)) first')
  if mask is not None:
    raise ValueError('decode=True takes no mask (decoding has no padding '
                     'input)')
  batch = model.blocks[0].attention.cache.qk.shape[0]
  if tokens.ndim != 2 or tokens.shape[0] != batch:
    raise ValueError(f'tokens must have shape [{batch}, length] (the batch '
                     f'of init_cache), got {tuple(tokens.shape)}')
  position = model.cache[...]
  x = model.embed(tokens)
  if model.positional is not None:
    x = model.positional(x, start=position)
  x1 = x2 = x
  for block in model.blocks:  # in evaluation: no keys, no dropout
    x1, x2 = block(x1, x2, decode=True)
  model.cache[...] = position + tokens.shape[1]
  return model.logits(model.final_norm(jnp.concatenate([x1, x2], axis=-1)))


def _max_positions(model):
  """How many positions the model's positional encoding has (None: any)."""
  encoding = model.positional
  if hasattr(encoding, 'max_len'):
    return encoding.max_len
  if hasattr(encoding, 'shape'):  # axial
    return int(np.prod(encoding.shape))
  return None


def _sample(logits, temperature, key):
  """Next tokens int32[B] from logits [B, V]: argmax or softmax sampling."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, logits / temperature).astype(jnp.int32)


@nnx.jit(static_argnames='temperature')
def prefill(model, inputs, key, *, temperature):
  """The first call: inputs int[B, 1 + P] (0 then the prefix) -> the first
  sampled token int32[B]."""
  return _sample(model(inputs, decode=True)[:, -1], temperature, key)


@nnx.jit(static_argnames='temperature')
def step(model, token, key, *, temperature):
  """One decoding step: the last token int32[B] -> the next one int32[B].

  One compiled program for every step: its cost does not depend on how
  many tokens came before (the caches are of fixed size Lm).
  """
  return _sample(model(token[:, None], decode=True)[:, -1], temperature, key)


def generate(model, prefix: jax.Array, n_tokens: int, *,
             temperature: float = 0.0, key: Optional[jax.Array] = None,
             cache_len: Optional[int] = None,
             drop_len: Optional[int] = None) -> jax.Array:
  """Samples `n_tokens` tokens after `prefix` from a `ReformerLM`.

  The model's inputs are the start symbol 0 then the prefix (in one call),
  then each sampled token (one call each), as the model trains: position t
  predicts token t from the tokens before it.

  Args:
    model: a `lsh_jax.flax.ReformerLM` (its caches are (re)made here).
    prefix: int[B, P], P >= 0.
    n_tokens: how many tokens to sample (>= 1).
    temperature: 0 (greedy: argmax) or > 0 (softmax of logits /
      temperature).
    key: PRNG key, required when temperature > 0 (step i draws with
      `jax.random.fold_in(key, i)`).
    cache_len: Lm, the positions each attention layer keeps (Trax's
      `predict_mem_len`); default P + n_tokens, the whole sequence (then
      dense layers decode exactly what the full model computes).
    drop_len: positions dropped when a cache is full (defaults: see
      `init_cache` of the attention modules).

  Returns:
    int32[B, n_tokens].

  Example (greedy, a tiny untrained model):

  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from lsh_jax.flax import ReformerLM, SelfAttention, generate
  >>> model = ReformerLM(16, d_model=8, d_ff=16, d_attention_key=4,
  ...                    d_attention_value=4, n_layers=2, n_heads=2,
  ...                    max_len=32, attention_type=SelfAttention,
  ...                    rngs=nnx.Rngs(0))
  >>> tokens = generate(model, jnp.ones((2, 3), jnp.int32), 5)
  >>> tokens.shape, bool(((tokens >= 0) & (tokens < 16)).all())
  ((2, 5), True)
  """
  prefix = jnp.asarray(prefix)
  if prefix.ndim != 2 or not jnp.issubdtype(prefix.dtype, jnp.integer):
    raise ValueError(f'prefix must be an int array [batch, length], got '
                     f'{prefix.dtype}{list(prefix.shape)}')
  n_tokens = validation.check_positive_int('n_tokens', n_tokens)
  temperature = float(temperature)
  if temperature < 0 or not np.isfinite(temperature):
    raise ValueError(f'temperature must be >= 0, got {temperature}')
  if temperature > 0 and key is None:
    raise ValueError('temperature > 0 samples: pass key=jax.random.key(...)')
  key = jax.random.key(0) if key is None else key  # unused when greedy
  batch, prefix_len = prefix.shape
  limit = _max_positions(model)
  if limit is not None and prefix_len + n_tokens > limit:
    raise ValueError(f'the prefix ({prefix_len}) and n_tokens ({n_tokens}) '
                     f'need {prefix_len + n_tokens} positions, more than the '
                     f'positional encoding has ({limit})')
  model.init_cache((batch, prefix_len + n_tokens if cache_len is None
                    else cache_len), drop_len=drop_len)
  inputs = jnp.concatenate([jnp.zeros((batch, 1), jnp.int32),
                            prefix.astype(jnp.int32)], axis=1)
  tokens = [prefill(model, inputs, jax.random.fold_in(key, 0),
                    temperature=temperature)]
  for i in range(1, n_tokens):
    tokens.append(step(model, tokens[-1], jax.random.fold_in(key, i),
                       temperature=temperature))
  return jnp.stack(tokens, axis=1)
