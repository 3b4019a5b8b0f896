"""The duplication (copy) task's data, shared by the Trax and Flax demos.

Plain NumPy (no Trax, no Flax): sequences `0 w 0 w`, a model scored on the
second `w`, which it can only predict by attending back to the first.
"""
import numpy as np

__all__ = ['copy_batch']


def copy_batch(rng, vocab_size, length, batch_size):
  """One batch of `0 w 0 w` sequences of exactly `length` tokens.

  Returns:
    (tokens int32[B, L], weights float32[B, L]): weights are 1 on the second
    `w`, the tokens a model can only get right by copying.
  """
  half = length // 2 - 1
  w = rng.randint(1, vocab_size - 1, size=(batch_size, half))
  zero = np.zeros((batch_size, 1), np.int64)
  tokens = np.concatenate([zero, w, zero, w], axis=1).astype(np.int32)
  weights = np.zeros(tokens.shape, np.float32)
  weights[:, half + 2:] = 1.0
  return tokens, weights
