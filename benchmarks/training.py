"""Training-side benchmark groups, each timed in one process, interleaved.

  python benchmarks/case.py --group layer:4K:8       # the Trax layer, B = 8
  python benchmarks/case.py --group lm:1K:2          # ReformerLM, 2 layers
  python benchmarks/case.py --group multihead:4K:8   # multi-head entry points
  python benchmarks/case.py --group seqpar:16K:1     # 1 vs 2 CPU devices

A group is a list of functions of arrays that answer the same question
(lsh_jax against Trax, or against the nested-vmap form and dense
attention; a string instead of a function is a row not run, with its
reason). `time_group` compiles them all, then calls them in turn, round
after round, so that every ratio in a group compares calls made seconds
apart on the same (shared, noisy) machine; each function's median and its
spread are kept, and the median CPU time of a call too (less sensitive to
other processes than wall time). Memory: XLA's own temporaries of each
compiled function (`memory_analysis`); a process-wide peak would mix the
group's functions.

Settings (issue 18): float32, d_model 512, 8 heads, d_qk = d_v = 64,
chunk 64, one chunk back, causal (a language model's), automatic
n_buckets, 4 rounds.
"""
import functools
import statistics
import time

import jax
import jax.numpy as jnp

D_MODEL, N_HEADS, DEPTH, CHUNK_LEN, N_HASHES = 512, 8, 64, 64, 4
VOCAB = 256
# n_parallel_heads settings timed for both layers: Trax's LSH default (one
# (example, head) pair at a time) and one example's heads at once.
PARALLEL_HEADS = (1, N_HEADS)


def _attention_kwargs(length):
  import lsh_jax
  n_buckets = lsh_jax.auto_n_buckets(length, CHUNK_LEN)
  return dict(d_qk=DEPTH, d_v=DEPTH, causal=True, chunk_len=CHUNK_LEN,
              n_chunks_before=1, n_chunks_after=0, n_hashes=N_HASHES,
              n_buckets=list(n_buckets) if isinstance(n_buckets, tuple)
              else n_buckets, attention_dropout=0.0, output_dropout=0.0)


def _layer_classes():
  from trax import layers as tl
  from lsh_jax import trax as lsh_trax
  return {'lsh_jax': lsh_trax.LSHSelfAttention, 'trax': tl.LSHSelfAttention}


def layer_group(length, batch, parallel_heads=PARALLEL_HEADS):
  """The multi-head Trax layer, forward+backward in input and weights.

  What a training step computes per attention layer: `jax.grad` of
  `<pure_fn(x, weights), ct>` in x and the weights (the layers' custom
  backward: recompute from the stored buckets, then the vjp), jitted, at
  each n_parallel_heads of `PARALLEL_HEADS`; forward alone at Trax's
  default. Returns {name: (fn, args)}.

  parallel_heads: the n_parallel_heads settings (`layer:L:B:1+8` in a
  group spec).
  """
  from trax import shapes
  x = jax.random.normal(jax.random.PRNGKey(0), (batch, length, D_MODEL))
  ct = jax.random.normal(jax.random.PRNGKey(7), x.shape)
  rng = jax.random.PRNGKey(1)
  group = {}
  for impl, cls in _layer_classes().items():
    for nph in parallel_heads:
      layer = cls(n_heads=N_HEADS, n_parallel_heads=nph, mode='train',
                  **_attention_kwargs(length))
      layer.init(shapes.signature(x))

      def forward(x, weights, layer=layer, state=layer.state):
        return layer.pure_fn(x, weights, state, rng)[0]

      def grads(x, weights, forward=forward):
        loss = lambda x, w: jnp.vdot(forward(x, w), ct)
        return jax.grad(loss, argnums=(0, 1))(x, weights)
      group[f'layer_{impl}[nph={nph}]/bwd'] = (grads, (x, layer.weights))
      if nph == 1:
        group[f'layer_{impl}[nph={nph}]/fwd'] = (forward, (x, layer.weights))
  group.update(_flax_layer(length, x, ct))
  return group


def _flax_layer(length, x, ct):
  """`lsh_jax.flax.LSHSelfAttention` at the layer's sizes (no biases, as
  the Trax layers), forward and forward+backward in x and its parameters;
  {} when Flax is not installed."""
  try:
    from flax import nnx
    from lsh_jax.flax import LSHSelfAttention
  except ImportError:
    return {}
  kw = _attention_kwargs(length)
  module = LSHSelfAttention(
      N_HEADS, D_MODEL, qk_features=N_HEADS * DEPTH,
      v_features=N_HEADS * DEPTH, causal=True, use_bias=False,
      n_hashes=N_HASHES, n_buckets=kw['n_buckets'], chunk_len=CHUNK_LEN,
      n_chunks_before=1, n_chunks_after=0, rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)

  def forward(x, params):
    # deterministic: the module's fixed hash key (training draws a fresh
    # one per call from its rng stream: the same work).
    return nnx.merge(graphdef, params, rest)(x, deterministic=True)

  def grads(x, params):
    loss = lambda x, p: jnp.vdot(forward(x, p), ct)
    return jax.grad(loss, argnums=(0, 1))(x, params)
  return {'layer_flax/bwd': (grads, (x, params)),
          'layer_flax/fwd': (forward, (x, params))}


def lm_group(length, n_layers):
  """One ReformerLM training step with each attention layer.

  Trax's ReformerLM (reversible layers, d_model 512, d_ff 2048, 8 heads,
  vocab 256, no dropout), batch 1, cross-entropy loss, Trax's Adam
  (`tree_update`), the step jitted as a Trax trainer jits it. Also each
  model's attention layers alone (forward+backward of one layer at batch 1
  times n_layers is the attention's share of the step).
  """
  from trax import models
  from trax import optimizers
  from trax import shapes
  tokens = jax.random.randint(jax.random.PRNGKey(0), (1, length), 0, VOCAB)
  group = {}
  for impl, cls in _layer_classes().items():
    attention = functools.partial(cls, **_attention_kwargs(length))
    model = models.ReformerLM(
        VOCAB, d_model=D_MODEL, d_ff=4 * D_MODEL, n_layers=n_layers,
        n_heads=N_HEADS, dropout=0.0, max_len=length, attention_type=attention,
        mode='train')
    model.init(shapes.signature(tokens))
    optimizer = optimizers.Adam(learning_rate=1e-4)
    slots, opt_params = optimizer.tree_init(model.weights)

    def step(weights, slots, tokens, model=model, state=model.state,
             optimizer=optimizer, opt_params=opt_params):
      def loss(weights):
        logits = model.pure_fn(tokens, weights, state, jax.random.PRNGKey(1))[0]
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, tokens[..., None], -1))
      grads = jax.grad(loss)(weights)
      return optimizer.tree_update(0, grads, weights, slots, opt_params)[:2]
    group[f'lm_{impl}/train'] = (step, (model.weights, slots, tokens))
  for name, (fn, args) in layer_group(length, 1, parallel_heads=(1,)).items():
    if name.endswith('[nph=1]/bwd'):
      group[name] = (fn, args)
  return group


def _multihead_inputs(length, batch):
  """q, v, a cotangent [B, T, N, H]; lsh_self_attention's settings; a key."""
  import lsh_jax
  kq, kv, kc = jax.random.split(jax.random.PRNGKey(0), 3)
  shape = (batch, length, N_HEADS, DEPTH)
  q, v, ct = (jax.random.normal(k, shape) for k in (kq, kv, kc))
  kw = _attention_kwargs(length)
  for name in ('d_qk', 'd_v', 'attention_dropout', 'output_dropout'):
    kw.pop(name)
  kw['n_buckets'] = lsh_jax.auto_n_buckets(length, CHUNK_LEN)
  return q, v, ct, kw, jax.random.PRNGKey(1)


def multihead_group(length, batch):
  """Multi-head attention without projections, forward+backward in q, v.

  `lsh_jax.lsh_self_attention` ([B, T, N, H], when this checkout has it;
  no Flax module row yet), the nested-vmap form of `lsh_attention`, and
  dense `jax.nn.dot_product_attention` (causal, the
  exact answer LSH approximates) at the same sizes.
  """
  import lsh_jax
  q, v, ct, kw, key = _multihead_inputs(length, batch)
  forwards = {}
  if hasattr(lsh_jax, 'lsh_self_attention'):
    forwards['multihead_lsh_self_attention'] = (
        lambda q, v: lsh_jax.lsh_self_attention(q, v, hash_key=key, **kw))
  keys = jax.random.split(key, batch * N_HEADS).reshape(batch, N_HEADS, -1)

  def nested_vmap(q, v):
    one = lambda q, v, k: lsh_jax.lsh_attention(q, v, hash_key=k, **kw)
    heads = jax.vmap(one, in_axes=(1, 1, 0), out_axes=1)
    return jax.vmap(heads)(q, v, keys)
  forwards['multihead_nested_vmap'] = nested_vmap

  def dense(q, v):
    k = lsh_jax.core.normalize_keys(q)
    return jax.nn.dot_product_attention(q, k, v, scale=1.0, is_causal=True)
  group = {}
  scores = batch * N_HEADS * length**2
  if scores > DENSE_MAX_SCORES:
    # XLA:CPU's dot_product_attention materialises the [B, N, L, L] scores
    # (its backward several such arrays): past the memory cap here.
    reason = (f'dense scores B*N*L^2 = {scores:,} floats > '
              f'{DENSE_MAX_SCORES:,}: past the memory cap on CPU')
    group.update({f'multihead_dense_nn/{m}': reason for m in ('fwd', 'bwd')})
  else:
    forwards['multihead_dense_nn'] = dense
  for name, forward in forwards.items():
    group[f'{name}/fwd'] = (forward, (q, v))
    grads = lambda q, v, f=forward: jax.grad(
        lambda q, v: jnp.vdot(f(q, v), ct), argnums=(0, 1))(q, v)
    group[f'{name}/bwd'] = (grads, (q, v))
  return group


def seqpar_group(length, batch):
  """`lsh_self_attention` forward+backward in q, v on one CPU device and
  sequence-parallel over two (head exchange, `mesh=`, `sequence_axis=`),
  in one process with 2 CPU devices (`case.py` sets JAX_NUM_CPU_DEVICES=2
  for this group, before JAX starts). Each device runs its own pairs' loop
  on its own thread; on one device XLA:CPU runs a loop body's small
  matmuls on one thread."""
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

  import lsh_jax
  if jax.device_count() < 2:
    return {f'seqpar_{d}dev/bwd': 'needs 2 CPU devices: JAX_NUM_CPU_DEVICES=2'
            for d in (1, 2)}
  q, v, ct, kw, key = _multihead_inputs(length, batch)
  mesh = Mesh(np.array(jax.devices()[:2]), ('seq',))
  sharded = NamedSharding(mesh, P(None, 'seq'))

  def grads(q, v, ct, **layout):
    return jax.grad(lambda q, v: jnp.vdot(lsh_jax.lsh_self_attention(
        q, v, hash_key=key, **kw, **layout), ct), argnums=(0, 1))(q, v)
  one = jax.devices()[0]
  return {
      'seqpar_1dev/bwd': (grads, jax.device_put((q, v, ct), one)),
      'seqpar_2dev/bwd': (functools.partial(grads, mesh=mesh,
                                            sequence_axis='seq'),
                          jax.device_put((q, v, ct), sharded)),
  }


# Dense multi-head attention rows only up to this many scores (1 GB of
# float32; its backward keeps several such arrays: B 8 x 8 heads at 4K, 2**30
# scores, went past the 22 GB cap, and 8 heads at 16K asked for 26 GB).
DENSE_MAX_SCORES = 2**28
def flax_lm_group(length, n_layers, batch=1):
  """The Flax ReformerLM's training step against Trax's (flax_training.py)."""
  import flax_training  # pylint: disable=import-outside-toplevel
  return flax_training.flax_lm_group(length, n_layers, batch)


GROUPS = {'layer': layer_group, 'lm': lm_group, 'multihead': multihead_group,
          'seqpar': seqpar_group, 'flax_lm': flax_lm_group}


def parse_group(spec):
  """'layer:4K:8' -> ('layer', 4096, 8, {}): kind, length, batch or layers,
  options ('layer:4K:8:1+8': n_parallel_heads 1 and 8; 'flax_lm:1K:2:4':
  2 layers at batch 4)."""
  import run  # pylint: disable=import-outside-toplevel
  kind, length, size, *rest = spec.split(':')
  if kind not in GROUPS:
    raise ValueError(f'group kind must be one of {sorted(GROUPS)}, got '
                     f'{kind!r}')
  options = {}
  if rest and kind == 'layer':
    options['parallel_heads'] = tuple(int(n) for n in rest[0].split('+'))
  if rest and kind == 'flax_lm':
    options['batch'] = int(rest[0])
  return kind, run.parse_length(length), int(size), options


def time_group(spec, *, repeats, budget_s):
  """Compiles and times one group, interleaved; returns one record each."""
  import timing  # pylint: disable=import-outside-toplevel
  kind, length, size, options = parse_group(spec)
  group = GROUPS[kind](length, size, **options)
  compiled, records = {}, {}
  skipped = {name: reason for name, reason in group.items()
             if isinstance(reason, str)}  # not run, with the reason
  group = {name: v for name, v in group.items() if name not in skipped}
  for name, (fn, args) in group.items():
    jax.block_until_ready(args)
    t0 = time.perf_counter()
    compiled[name] = jax.jit(fn).lower(*args).compile()
    analysis = compiled[name].memory_analysis()
    impl, mode = name.split('/')
    records[name] = dict(
        group=spec, impl=impl, mode=mode, length=length, hashes=N_HASHES,
        size=size, compile_s=time.perf_counter() - t0,
        xla_temp_mb=analysis.temp_size_in_bytes / 2**20, times_ms=[],
        cpu_ms=[])
    t0 = time.perf_counter()
    jax.block_until_ready(compiled[name](*args))  # warm-up
    records[name]['first_call_s'] = time.perf_counter() - t0
  start = time.perf_counter()
  for _ in range(repeats):
    for name, (fn, args) in group.items():
      c0, t0 = time.process_time(), time.perf_counter()
      jax.block_until_ready(compiled[name](*args))
      records[name]['times_ms'].append((time.perf_counter() - t0) * 1e3)
      records[name]['cpu_ms'].append((time.process_time() - c0) * 1e3)
    if time.perf_counter() - start > budget_s and len(
        records[name]['times_ms']) >= 3:
      break
  for r in records.values():
    r.update(median_ms=statistics.median(r['times_ms']),
             min_ms=min(r['times_ms']), max_ms=max(r['times_ms']),
             cpu_median_ms=statistics.median(r['cpu_ms']),
             versions=timing.package_versions(('jax', 'jaxlib', 'trax')))
  for name, reason in skipped.items():
    impl, mode = name.split('/')
    records[name] = dict(group=spec, impl=impl, mode=mode, length=length,
                         hashes=N_HASHES, size=size, skip=reason)
  return list(records.values())
