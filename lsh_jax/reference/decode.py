"""The decoding reference: Trax's `mode='predict'`, one head of one example.

Plain NumPy, float64; `lsh_jax.trax.predict` is checked against it step by
step (tests/test_trax_predict.py).
"""
import numpy as np

from lsh_jax.reference.spec import lsh_attention
from lsh_jax.reference.spec import mask_logits
from lsh_jax.reference.spec import our_hash_vectors
from lsh_jax.reference.spec import our_softmax
from lsh_jax.reference.spec import shared_qk_keys

__all__ = ['predict_keys', 'predict_prefix', 'predict_step']


def predict_prefix(x, rotations, w_q, w_v, w_o, *, n_buckets, chunk_len,
                   n_chunks_before, mem_len, drop_len, return_lse=False):
  """The first call of a decoding layer: T tokens at once.

  Trax attends over the tokens followed by zeros: over a whole memory of
  `mem_len` when the prefix is short (T <= drop_len and T < mem_len), else
  over the T tokens; either padded with zeros to a multiple of chunk_len.
  Causal LSH attention (docs/algorithm.md §1-§5) over that, outputs of the
  T tokens.

  Args:
    x: float[T, Dm] the tokens; rotations: float[D, R, sum(factors) // 2];
    w_q: float[Dm, D]; w_v: float[Dm, Dv]; w_o: float[Dv, Dm].

    return_lse: also return the rounds' log-sum-exps float[R, T] (all
      below -1e4: a query that saw only itself, docs/algorithm.md §5's caveat).

  Returns:
    (out float[T, Dm], memory dict for `predict_step`: `mem` float[Lm, Dm],
    `end` int (where the next token goes), `buckets` int[R, Lm] with round
    offsets), and lse with return_lse.
  """
  x = np.asarray(x, np.float64)
  n_tokens, n_hashes = x.shape[0], np.shape(rotations)[1]
  short = n_tokens <= drop_len and n_tokens < mem_len
  length = mem_len if short else n_tokens
  length = -(-length // chunk_len) * chunk_len
  seq = np.zeros((length, x.shape[1]))
  seq[:n_tokens] = x
  q, v = seq @ w_q, seq @ w_v
  out, _, lse = lsh_attention(
      q, v, rotations, n_buckets=n_buckets, n_hashes=n_hashes,
      chunk_len=chunk_len, n_chunks_before=n_chunks_before, causal=True,
      return_rounds=True)
  buckets = our_hash_vectors(q, rotations, n_buckets, n_hashes)
  buckets = buckets.reshape(n_hashes, length)[:, :n_tokens]
  kept = min(n_tokens, mem_len)  # the memory keeps the last mem_len tokens
  memory = dict(mem=np.zeros((mem_len, x.shape[1])), end=kept,
                buckets=np.zeros((n_hashes, mem_len), np.int64))
  memory['mem'][:kept] = x[n_tokens - kept:]
  memory['buckets'][:, :kept] = buckets[:, n_tokens - kept:]
  if return_lse:
    return out[:n_tokens] @ w_o, memory, lse[:, :n_tokens]
  return out[:n_tokens] @ w_o, memory


def predict_keys(buckets, q_buckets, q_start, n_keys):
  """The memory positions a decoded token attends to, Trax's choice.

  Ranked by (earlier than q_start + 2, shares a bucket with the token in
  some round, recency): past positions before future ones (Trax counts
  q_start + 1 as past), within each, those sharing a bucket first, and
  then the most recent past / the nearest future. The best `n_keys`.

  Args:
    buckets: int[R, Lm] memory buckets (the token's own included).
    q_buckets: int[R] the token's buckets.
    q_start: int, the token's position.
    n_keys: Ks = R * chunk_len * (1 + n_chunks_before).

  Returns:
    int[min(Ks, Lm)] positions, worst-ranked first (Trax's order).
  """
  shares = np.any(buckets == np.asarray(q_buckets)[:, None], axis=0)
  def rank(t):
    past = t <= q_start + 1
    return (past, bool(shares[t]), t if past else -t)
  ranked = sorted(range(buckets.shape[1]), key=rank)
  return np.array(ranked[-n_keys:])


def predict_step(memory, x_new, rotations, w_q, w_v, w_o, *, n_buckets,
                 chunk_len, n_chunks_before, drop_len):
  """One decoded token: Trax's `_use_predict_mem` + incremental forward.

  1. A full memory drops its oldest `drop_len` positions (memory and
     buckets move left, zeros come in).
  2. The token is written at `end` = q_start and hashed.
  3. It attends to `predict_keys` positions: keys are those positions'
     normalised queries / sqrt(D), with causal and exclude-self masks
     (positions not yet written are later: causally masked).

  Args:
    memory: dict from `predict_prefix` or a previous step (updated here).
    x_new: float[Dm] the token.
    rotations, w_q, w_v, w_o: as in `predict_prefix`.

  Returns:
    (out float[Dm], positions attended to int[Ks]).
  """
  mem, buckets = memory['mem'], memory['buckets']
  mem_len, n_hashes = mem.shape[0], buckets.shape[0]
  if memory['end'] + 1 > mem_len:
    mem = np.concatenate([mem[drop_len:], np.zeros_like(mem[:drop_len])])
    buckets = np.concatenate([buckets[:, drop_len:],
                              np.zeros_like(buckets[:, :drop_len])], axis=1)
    memory['end'] -= drop_len
  q_start = memory['end']
  mem[q_start] = np.asarray(x_new, np.float64)
  q = mem[q_start] @ w_q  # [D]
  q_buckets = our_hash_vectors(q[None], rotations, n_buckets, n_hashes)
  buckets[:, q_start] = q_buckets
  positions = predict_keys(buckets, q_buckets, q_start,
                           n_hashes * chunk_len * (1 + n_chunks_before))
  chosen = mem[positions]
  dots = q[None] @ shared_qk_keys(chosen @ w_q).T  # [1, Ks]
  dots = mask_logits(dots, [q_start], positions, causal=True)
  probs, _ = our_softmax(dots)
  out = (probs @ (chosen @ w_v))[0] @ w_o
  memory.update(mem=mem, buckets=buckets, end=q_start + 1)
  return out, positions
