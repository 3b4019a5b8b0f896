"""The JAX cases: lsh_jax, Trax 1.4.1's fast path, dense attention, matmul.

Each builder takes (length, n_hashes, mode) and returns `(fn, args)`: a
function of arrays only, which the case runner jit-compiles (compile time is
timed apart) and then calls repeatedly. `mode` is 'fwd' (the output) or 'bwd'
(forward + backward: the gradient in the inputs, with a fixed random
cotangent).

Settings (the issue's): float32, batch 1, one head, d = 64, chunk 64, one
chunk back, none after, n_buckets = 2L/64 (factorised above 128, the way
Trax picks them: `lsh_jax.auto_n_buckets`).
"""
import functools

import jax
import jax.numpy as jnp

DEPTH = 64
CHUNK_LEN = 64
N_CHUNKS_BEFORE = 1
N_CHUNKS_AFTER = 0
# Query rows per block of the blocked dense baseline: [B, L] logits per step.
DENSE_BLOCK_ROWS = 256


def n_buckets_for(length):
  import lsh_jax
  return lsh_jax.auto_n_buckets(length, CHUNK_LEN)


def _inputs(length, n):
  keys = jax.random.split(jax.random.PRNGKey(0), n)
  return [jax.random.normal(k, (length, DEPTH), jnp.float32) for k in keys]


def _with_grad(forward, n_args):
  """fwd -> forward itself; bwd -> gradient of <forward(...), ct> in args."""
  def loss(ct, *args):
    return jnp.vdot(forward(*args), ct)
  return jax.grad(loss, argnums=tuple(range(1, 1 + n_args)))


def _mode(forward, args, mode, out_shape):
  if mode == 'fwd':
    return forward, tuple(args)
  ct = jax.random.normal(jax.random.PRNGKey(7), out_shape, jnp.float32)
  return _with_grad(forward, len(args)), (ct, *args)


# ---------------------------------------------------------------- lsh_jax
def lsh_jax_case(length, n_hashes, mode, sequential_rounds=False):
  import lsh_jax
  q, v = _inputs(length, 2)
  rng = jax.random.PRNGKey(1)
  n_buckets = n_buckets_for(length)
  # `sequential_rounds=True` (rounds in turn, also for R * L < 2**10) only
  # when asked: the option may not exist in every version of the core.
  # Otherwise the core's default: automatic rounds (in turn from
  # R * L >= 2**10).
  extra = {'sequential_rounds': True} if sequential_rounds else {}

  def forward(q, v):
    return lsh_jax.lsh_attention(
        q, v, hash_key=rng, n_buckets=n_buckets, n_hashes=n_hashes,
        chunk_len=CHUNK_LEN, n_chunks_before=N_CHUNKS_BEFORE,
        n_chunks_after=N_CHUNKS_AFTER, **extra)
  return _mode(forward, (q, v), mode, (length, DEPTH))


def lsh_jax_seq_case(length, n_hashes, mode):
  """lsh_jax with `sequential_rounds=True`: rounds in turn at every size."""
  return lsh_jax_case(length, n_hashes, mode, sequential_rounds=True)


# ------------------------------------------------------ Trax 1.4.1 layer
def _trax_layer(length, n_hashes):
  from trax import layers as tl
  from trax import shapes
  n_buckets = n_buckets_for(length)
  layer = tl.LSHSelfAttention(
      n_heads=1, d_qk=DEPTH, d_v=DEPTH, causal=False, chunk_len=CHUNK_LEN,
      n_chunks_before=N_CHUNKS_BEFORE, n_chunks_after=N_CHUNKS_AFTER,
      n_hashes=n_hashes,
      n_buckets=list(n_buckets) if isinstance(n_buckets, tuple) else n_buckets,
      attention_dropout=0.0, output_dropout=0.0, use_reference_code=False,
      mode='train')
  x = jax.random.normal(jax.random.PRNGKey(0), (1, length, DEPTH))
  layer.init(shapes.signature(x))
  return layer, x


def trax_case(length, n_hashes, mode):
  """Trax's fast path (`forward_and_or_backward`, custom backward), jitted.

  `layer(x)` is not jitted in Trax (op-by-op dispatch, ~3x slower); the
  layer's `pure_fn` under `jax.jit` is what a Trax training loop runs. The
  layer includes its q/v/output projections (d_model = d = 64: three
  [L, 64] x [64, 64] matmuls, ~1/10 of the attention FLOPs at 4 rounds);
  its custom backward also computes the weights' gradient.
  """
  layer, x = _trax_layer(length, n_hashes)
  weights, state = layer.weights, layer.state
  rng = jax.random.PRNGKey(1)

  def forward(x, weights):
    return layer.pure_fn(x, weights, state, rng)[0]
  if mode == 'fwd':
    return forward, (x, weights)
  ct = jax.random.normal(jax.random.PRNGKey(7), x.shape, jnp.float32)

  def grad_x(ct, x, weights):
    return jax.grad(lambda x: jnp.vdot(forward(x, weights), ct))(x)
  return grad_x, (ct, x, weights)


# ------------------------------------------------------------ dense, exact
def _keys(q):
  import lsh_jax
  return lsh_jax.core.normalize_keys(q)


def dense_nn_case(length, n_hashes, mode):
  """`jax.nn.dot_product_attention` (the library's dense attention)."""
  del n_hashes
  q, v = _inputs(length, 2)

  def forward(q, v):
    k = _keys(q)
    # dot_product_attention scales by 1/sqrt(D) itself; our keys already are.
    out = jax.nn.dot_product_attention(q[None, :, None], k[None, :, None],
                                       v[None, :, None], scale=1.0)
    return out[0, :, 0]
  return _mode(forward, (q, v), mode, (length, DEPTH))


def dense_plain_case(length, n_hashes, mode):
  """softmax(q k^T) v written out: the whole [L, L] logits at once."""
  del n_hashes
  q, v = _inputs(length, 2)

  def forward(q, v):
    return jax.nn.softmax(q @ _keys(q).T, axis=-1) @ v
  return _mode(forward, (q, v), mode, (length, DEPTH))


def dense_blocked_case(length, n_hashes, mode):
  """Exact dense attention, B query rows at a time (lax.map, rematerialised).

  [B, L] logits per step instead of [L, L]: memory O(B L), cache-friendlier.
  """
  del n_hashes
  q, v = _inputs(length, 2)
  rows = min(DENSE_BLOCK_ROWS, length)

  def forward(q, v):
    k = _keys(q)

    @jax.checkpoint
    def block(qb):  # [B, D] -> [B, Dv]
      return jax.nn.softmax(qb @ k.T, axis=-1) @ v
    out = jax.lax.map(block, q.reshape(length // rows, rows, DEPTH))
    return out.reshape(length, DEPTH)
  return _mode(forward, (q, v), mode, (length, DEPTH))


# ------------------------------------------------------------------ matmul
MATMUL_N = 2048


def matmul_case(length, n_hashes, mode):
  """A float32 N^3 matmul: the machine's achievable rate (length ignored)."""
  del length, n_hashes, mode
  a, b = jax.random.normal(jax.random.PRNGKey(0), (2, MATMUL_N, MATMUL_N))
  return (lambda a, b: a @ b), (a, b)


# ---------------------------------------- ReformerLM training steps per s
LM = dict(vocab_size=256, d_model=128, d_ff=256, d_attention_key=DEPTH,
          d_attention_value=DEPTH, n_layers=2, n_heads=2, dropout=0.0)


def _reformer_lm_case(layer_cls, length, n_hashes, mode):
  """One SGD training step of a small ReformerLM (jit of grad + update)."""
  del mode
  from trax import models
  from trax import shapes
  n_buckets = n_buckets_for(length)
  attention = functools.partial(
      layer_cls, chunk_len=CHUNK_LEN, n_chunks_before=N_CHUNKS_BEFORE,
      n_chunks_after=N_CHUNKS_AFTER, n_hashes=n_hashes,
      n_buckets=list(n_buckets) if isinstance(n_buckets, tuple) else n_buckets)
  model = models.ReformerLM(max_len=length, attention_type=attention,
                            mode='train', **LM)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (1, length), 0,
                              LM['vocab_size'])
  model.init(shapes.signature(tokens))
  weights, state = model.weights, model.state
  rng = jax.random.PRNGKey(1)

  def step(weights, tokens):
    def loss(weights):
      logits = model.pure_fn(tokens, weights, state, rng)[0]
      logp = jax.nn.log_softmax(logits, axis=-1)
      return -jnp.mean(jnp.take_along_axis(logp, tokens[..., None], -1))
    grads = jax.grad(loss)(weights)
    return jax.tree_util.tree_map(lambda w, g: w - 1e-3 * g, weights, grads)
  return step, (weights, tokens)


def reformerlm_trax_case(length, n_hashes, mode):
  from trax import layers as tl
  return _reformer_lm_case(tl.LSHSelfAttention, length, n_hashes, mode)


def reformerlm_lsh_jax_case(length, n_hashes, mode):
  try:
    from lsh_jax.trax import LSHSelfAttention
  except ImportError as e:
    raise NotImplementedError(
        f'lsh_jax.trax.LSHSelfAttention is not importable yet ({e})')
  return _reformer_lm_case(LSHSelfAttention, length, n_hashes, mode)


CASES = {
    'lsh_jax': lsh_jax_case,
    'lsh_jax_seq': lsh_jax_seq_case,
    'trax': trax_case,
    'dense_nn': dense_nn_case,
    'dense_plain': dense_plain_case,
    'dense_blocked': dense_blocked_case,
    'matmul': matmul_case,
    'reformerlm_trax': reformerlm_trax_case,
    'reformerlm_lsh_jax': reformerlm_lsh_jax_case,
}


def versions():
  import timing
  return {'jax': jax.__version__,
          **timing.package_versions(('jaxlib', 'trax', 'numpy'))}


def run(impl, length, n_hashes, mode, *, repeats, budget_s):
  """Builds, compiles (timed apart), warms up and times one case."""
  import time
  import timing
  fn, args = CASES[impl](length, n_hashes, mode)
  jax.block_until_ready(args)
  base_mb = timing.rss_mb()
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  temp_mb = None
  try:
    analysis = compiled.memory_analysis()
    temp_mb = (analysis.temp_size_in_bytes + analysis.output_size_in_bytes
               ) / 2**20
  except Exception:  # not every backend reports it
    pass
  timing.reset_peak_rss()
  call = lambda: jax.block_until_ready(compiled(*args))
  t0 = time.perf_counter()
  call()  # warm-up: first-call allocations
  first_s = time.perf_counter() - t0
  stats = timing.time_calls(call, repeats=repeats, budget_s=budget_s,
                            first_call_s=first_s)
  return dict(stats, compile_s=compile_s, first_call_s=first_s,
              base_rss_mb=base_mb, peak_rss_mb=timing.peak_rss_mb(),
              xla_temp_out_mb=temp_mb, versions=versions())
