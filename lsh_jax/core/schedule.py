"""How the work is scheduled: chunks per loop step, rounds at once or in turn.

Speed only: every choice here gives the same results (to a few float32 ulps
for the rounds' schedule). The thresholds were measured on CPU with jax
0.10.2 (benchmarks/profile_lsh.py); the numbers are in the comments.
"""
__all__ = ['chunks_per_block', 'round_schedule']

# Logits processed per step of the chunk loop, summed over rounds: small
# enough to stay in the L2 cache while masks, exp and the value matmul read
# them (measured: one huge score tensor runs ~15x slower per chunk).
# Measured at 64K, one round of C = 64, W = 2: 4 chunks a step (2**15
# logits) run the forward 1.5x and the backward 1.25x faster than 16, and
# 8 chunks are as slow as 16; 1 to 4 are about equal.
_BLOCK_LOGITS = 2**15
# Except when all of a step's logits (every round attended at once, or one
# round in turn) fit this many: then no chunk loop at all. A loop step
# copies its block's inputs and outputs; at 1K-4K that costs more than the
# cache misses of one [M, C, W*C] pass (jax 0.10.2, one-process A/B at
# chunk 64, 4 rounds in turn, forward+backward: 1K 1.21-1.24x, 4K
# 1.15-1.26x faster, forward within noise). At 16K blocks of 2**19 logits
# are as fast as 2**15 in the backward and 0.88x in the forward.
_WHOLE_ROUND_LOGITS = 2**19
# Automatic rounds (`sequential_rounds=None`): from this many token-rounds
# R * L on, rounds run one after another into a running combine. One-process
# A/B at chunk 64 (vmapped -> in turn, median ms): forward+backward 256 x 4
# 3.3 -> 2.8, 512 x 8 18.2 -> 11.4, 1K x 4 18.7 -> 12.9, 2K x 4 47 -> 33,
# forward equal or faster; 128 x 2 equal (0.9 vs 1.0). In turn there is no
# [R, L, Dv] stack to fill, and each round's working set stays in cache.
_SEQUENTIAL_FROM = 2**10


def chunks_per_block(n_rounds: int, n_chunks: int,
                     logits_per_chunk: int) -> int:
  """K, the chunks per step of the chunk loop (a divisor of M = n_chunks).

  All n_chunks when the logits of n_rounds rounds fit `_WHOLE_ROUND_LOGITS`,
  else the largest divisor of n_chunks whose logits fit `_BLOCK_LOGITS`.
  """
  if n_rounds * n_chunks * logits_per_chunk <= _WHOLE_ROUND_LOGITS:
    return n_chunks
  target = max(1, _BLOCK_LOGITS // (n_rounds * logits_per_chunk))
  return max(b for b in range(1, min(target, n_chunks) + 1)
             if n_chunks % b == 0)


def round_schedule(sequential_rounds: bool | None, n_rounds: int,
                   length: int) -> bool:
  """Whether rounds run one after another, for `sequential_rounds` True,
  False or None (automatic: by the number of token-rounds R * L)."""
  if sequential_rounds is None:
    return n_rounds > 1 and n_rounds * length >= _SEQUENTIAL_FROM
  return bool(sequential_rounds)
