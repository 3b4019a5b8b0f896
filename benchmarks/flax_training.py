"""One training step: the Flax ReformerLM (optax Adam) against Trax's.

  python benchmarks/flax_training.py flax_lm:1K:2:2 flax_lm:4K:2:1 ...

(`make bench` runs the same groups, `training.GROUPS['flax_lm']`.)

A group `flax_lm:L:LAYERS:B` times, interleaved in one process
(`training.time_group`), one jitted training step of
  lm_flax/train   lsh_jax.flax.ReformerLM (reversible, LSHSelfAttention),
                  cross-entropy, optax.adam;
  lm_trax/train   trax.models.ReformerLM with Trax's own LSHSelfAttention,
                  the same loss, Trax's Adam (`tree_update`), jitted as a
                  Trax trainer jits it;
  lm_flax_projections/train
                  the same Flax step with each LSH attention replaced by
                  its projections alone (`ProjectionsOnly`: queries times
                  values, elementwise, then the output projection): every
                  matmul, norm, feed-forward and reversible recomputation
                  of the step, without the attention's hashing, sorting,
                  chunked attention and combine;
at the same configuration (issue 23: d_model 512, d_ff 2048, 8 heads of
64, 4 rounds, chunk 64, one chunk back, causal, vocabulary 256, dropout 0)
and batch B. Memory: XLA's temporaries of each compiled step
(`memory_analysis`). Prints one table row per group: the two steps, their
ratio, and Trax's step over the projections-only step: the most any
attention kernel could give the Flax step against Trax's (its attention
taking no time at all).
"""
import functools
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import training  # noqa: E402  (benchmarks/training.py)

D_FF = 4 * training.D_MODEL


def _loss(logits, tokens):
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp, tokens[..., None], -1))


def _projections_only():
  """An attention_type with LSHSelfAttention's projections and no attention."""
  from flax import nnx  # pylint: disable=import-outside-toplevel

  class ProjectionsOnly(nnx.Module):
    """out(qk(x) * value(x)): the layer's three matmuls, nothing else."""

    def __init__(self, num_heads, in_features, *, qk_features, v_features,
                 rngs, **unused):
      del num_heads, unused
      self.qk = nnx.Linear(in_features, qk_features, use_bias=False,
                           rngs=rngs)
      self.value = nnx.Linear(in_features, v_features, use_bias=False,
                              rngs=rngs)
      self.out = nnx.Linear(v_features, in_features, use_bias=False,
                            rngs=rngs)

    def __call__(self, x, mask=None, **unused):
      del mask, unused
      return self.out(self.qk(x) * self.value(x))
  return ProjectionsOnly


def _flax_step(length, n_layers, tokens, attention=None):
  import optax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from lsh_jax.flax import LSHSelfAttention  # pylint: disable=import-outside-toplevel
  from lsh_jax.flax import ReformerLM  # pylint: disable=import-outside-toplevel
  attention = attention or functools.partial(
      LSHSelfAttention, n_hashes=training.N_HASHES,
      chunk_len=training.CHUNK_LEN, n_chunks_before=1)
  model = ReformerLM(training.VOCAB, d_model=training.D_MODEL, d_ff=D_FF,
                     n_layers=n_layers, n_heads=training.N_HEADS,
                     d_attention_key=training.DEPTH,
                     d_attention_value=training.DEPTH, dropout=0.0,
                     max_len=length, attention_type=attention,
                     rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adam(1e-4)
  opt_state = tx.init(params)

  def step(params, opt_state, tokens):
    def loss(params):
      m = nnx.merge(graphdef, params, rest)
      return _loss(m(tokens, deterministic=False, rngs=nnx.Rngs(1)), tokens)
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  return step, (params, opt_state, tokens)


def _trax_step(length, n_layers, tokens):
  from trax import layers as tl  # pylint: disable=import-outside-toplevel
  from trax import models  # pylint: disable=import-outside-toplevel
  from trax import optimizers  # pylint: disable=import-outside-toplevel
  from trax import shapes  # pylint: disable=import-outside-toplevel
  attention = functools.partial(
      tl.LSHSelfAttention, n_hashes=training.N_HASHES,
      chunk_len=training.CHUNK_LEN, n_chunks_before=1)
  model = models.ReformerLM(
      training.VOCAB, d_model=training.D_MODEL, d_ff=D_FF,
      n_layers=n_layers, n_heads=training.N_HEADS, dropout=0.0,
      max_len=length, attention_type=attention, mode='train')
  model.init(shapes.signature(tokens))
  optimizer = optimizers.Adam(learning_rate=1e-4)
  slots, opt_params = optimizer.tree_init(model.weights)

  def step(weights, slots, tokens):
    def loss(weights):
      logits = model.pure_fn(tokens, weights, model.state,
                             jax.random.PRNGKey(1))[0]
      return _loss(logits, tokens)
    grads = jax.grad(loss)(weights)
    return optimizer.tree_update(0, grads, weights, slots, opt_params)[:2]
  return step, (model.weights, slots, tokens)


def flax_lm_group(length, n_layers, batch=1):
  """{'lm_flax/train': (step, args), 'lm_trax/train': ...,
  'lm_flax_projections/train': ...} at batch B."""
  tokens = jax.random.randint(jax.random.PRNGKey(0), (batch, length), 0,
                              training.VOCAB)
  return {'lm_flax/train': _flax_step(length, n_layers, tokens),
          'lm_trax/train': _trax_step(length, n_layers, tokens),
          'lm_flax_projections/train': _flax_step(
              length, n_layers, tokens, _projections_only())}


def main(specs, repeats=5, budget_s=600):
  print('| L | layers | B | Flax step (s) | Trax step (s) | Trax / Flax | '
        'Flax temp MB | Trax temp MB | projections only (s) | '
        'Trax / projections only |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  for spec in specs:
    kind, length, layers, options = training.parse_group(spec)
    if kind != 'flax_lm':
      raise ValueError(f'group must be flax_lm:L:LAYERS[:B], got {spec!r}')
    batch = options.get('batch', 1)
    records = {r['impl']: r for r in training.time_group(
        spec, repeats=repeats, budget_s=budget_s)}
    flax, trax = records['lm_flax'], records['lm_trax']
    floor = records['lm_flax_projections']
    print(f"| {length} | {layers} | {batch} | {flax['median_ms'] / 1e3:.2f} "
          f"| {trax['median_ms'] / 1e3:.2f} | "
          f"{trax['median_ms'] / flax['median_ms']:.2f}x | "
          f"{flax['xla_temp_mb']:.0f} | {trax['xla_temp_mb']:.0f} | "
          f"{floor['median_ms'] / 1e3:.2f} | "
          f"{trax['median_ms'] / floor['median_ms']:.2f}x |", flush=True)


if __name__ == '__main__':
  main(sys.argv[1:] or ['flax_lm:1K:2:2'])
