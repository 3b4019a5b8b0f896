"""No quadratic memory: lsh_attention compiled at L = 65,536.

Nothing is run: the forward and backward programs are compiled for abstract
inputs and XLA's own accounting is read (`memory_analysis()`), with the
buffer shapes in the optimised HLO. Expected sizes come from derivation:
an [L, L] float32 matrix at L = 65,536 is 16 GiB, whereas no array of the
LSH program may exceed the window logits of every round, R * L * W * C
values (linear in L; chunk blocks and rounds in turn keep it far smaller).
"""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lsh_jax

LONG = 65_536
SETTINGS = dict(n_buckets=64, n_hashes=2, chunk_len=64, n_chunks_before=1,
                n_chunks_after=0, causal=True)
WINDOW_LOGITS = 2 * 64 * 2  # R * C * W per query
_SHAPE = re.compile(r'\b(?:f64|f32|f16|bf16|s64|s32|u32|u8|s8|pred)\[([\d,]+)\]')


@functools.lru_cache(maxsize=None)  # one compilation per program
def _compile(length, backward):
  q = jax.ShapeDtypeStruct((length, 8), jnp.float32)
  v = jax.ShapeDtypeStruct((length, 8), jnp.float32)
  key = jax.random.PRNGKey(0)
  attend = lambda q, v: lsh_jax.lsh_attention(q, v, hash_key=key, **SETTINGS)
  if backward:
    attend = jax.grad(lambda q, v, f=attend: jnp.sum(f(q, v)),
                      argnums=(0, 1))
  return jax.jit(attend).lower(q, v).compile()


def _largest_buffer(compiled):
  """Elements of the largest array in the optimised HLO."""
  return max(int(np.prod([int(d) for d in dims.split(',') if d]))
             for dims in _SHAPE.findall(compiled.as_text()))


def _temp_bytes(compiled):
  stats = compiled.memory_analysis()
  if stats is None:  # not every backend reports it
    pytest.skip('memory_analysis() is not available on this backend')
  return stats.temp_size_in_bytes


@pytest.mark.parametrize('backward', [False, True], ids=['forward',
                                                         'backward'])
def test_no_buffer_grows_as_length_squared(backward):
  compiled = _compile(LONG, backward)
  dense_bytes = LONG * LONG * 4  # 16 GiB
  # The largest array is at most every round's window logits (derivation):
  # R * L * W * C = 16.8M values here, 1/256 of L^2.
  assert _largest_buffer(compiled) <= WINDOW_LOGITS * LONG
  # All temporaries together: a few copies of those logits (measured:
  # forward ~25 MB, backward ~260 MB); the dense matrix would be 16 GiB.
  assert _temp_bytes(compiled) < 8 * 4 * WINDOW_LOGITS * LONG < dense_bytes


@pytest.mark.long
def test_backward_memory_grows_linearly_with_length():
  """Four times the length: about four times the temporaries (16x if any
  buffer were quadratic)."""
  short, long = (_temp_bytes(_compile(n, True)) for n in (LONG // 4, LONG))
  assert long < 5 * short, (short, long)
