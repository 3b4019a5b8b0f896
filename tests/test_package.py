"""The package's public surface: every name in `__all__` resolves, and the
re-exports are the functions their modules define (not copies)."""
import lsh_jax
from lsh_jax import weights


def test_all_names_resolve():
  missing = [name for name in lsh_jax.__all__ if not hasattr(lsh_jax, name)]
  assert missing == []


def test_attention_weights_is_reexported():
  assert lsh_jax.attention_weights is weights.attention_weights
