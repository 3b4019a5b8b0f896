"""The copy task of `lsh-jax demo`, with a Flax NNX model and optax.

A decoder-only language model (token and learned position embeddings,
pre-norm blocks of `lsh_jax.flax.LSHSelfAttention` and a ReLU feed-forward,
causal) learns the Reformer paper's duplication task: sequences `0 w 0 w`,
`w` random symbols in [1, vocab_size - 2], loss and accuracy on the second
`w` only, the part a model can get right only by finding the first copy.
Sizes follow configs/reformer_copy_cpu.gin (the Trax demo): 64 tokens,
vocabulary 13, 2 layers of width 64, feed-forward 128, 2 heads of depth 32,
chunk 16 with one chunk back, 2 hash rounds, batch 32, Adam at 1e-3 after
100 warm-up steps.

After training, the same parameters are evaluated with n_hashes 1, 2, 4, 8
and with dense attention (`lsh_jax.flax.SelfAttention`), as `make demo`
does. The trained parameters are saved with `flax.serialization` (msgpack
of `nnx.state(model, nnx.Param)` as a plain dict): one small file, written
synchronously, and no dependency beyond Flax; Orbax, Flax's choice for
large, sharded or asynchronous checkpoints, buys nothing at this size.
"""
import dataclasses
import os
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax import serialization

from lsh_jax.apps.copy_data import copy_batch
from lsh_jax.flax import LSHSelfAttention
from lsh_jax.flax import SelfAttention


@dataclasses.dataclass(frozen=True)
class CopyConfig:
  """The model and task; defaults are the Trax demo's CPU sizes."""
  vocab_size: int = 13
  length: int = 64
  d_model: int = 64
  d_ff: int = 128
  n_heads: int = 2
  d_head: int = 32
  n_layers: int = 2
  n_hashes: int = 2
  chunk_len: int = 16
  n_chunks_before: int = 1
  batch_size: int = 32
  learning_rate: float = 1e-3
  warmup_steps: int = 100


class Block(nnx.Module):
  """Pre-norm residual block: attention, then a ReLU feed-forward."""

  def __init__(self, config: CopyConfig, attention: nnx.Module, *,
               rngs: nnx.Rngs):
    self.norm1 = nnx.LayerNorm(config.d_model, rngs=rngs)
    self.attention = attention
    self.norm2 = nnx.LayerNorm(config.d_model, rngs=rngs)
    self.ff1 = nnx.Linear(config.d_model, config.d_ff, rngs=rngs)
    self.ff2 = nnx.Linear(config.d_ff, config.d_model, rngs=rngs)

  def __call__(self, x):
    x = x + self.attention(self.norm1(x))
    return x + self.ff2(jax.nn.relu(self.ff1(self.norm2(x))))


class CopyLM(nnx.Module):
  """A causal LM: tokens int[B, T] -> logits float[B, T, vocab_size].

  `n_hashes=None` builds the dense twin (`SelfAttention`): the same
  parameters, exact attention. `layout` (mesh=, sequence_axis=,
  batch_axis=): sequence parallelism for tokens sharded along T (and B),
  passed to each `LSHSelfAttention`; the embeddings, norms and
  feed-forwards are position-wise and stay sharded (docs/scaling.md).
  """

  def __init__(self, config: CopyConfig, *, n_hashes: Optional[int] = -1,
               rngs: nnx.Rngs, **layout):
    n_hashes = config.n_hashes if n_hashes == -1 else n_hashes
    self.embed = nnx.Embed(config.vocab_size, config.d_model, rngs=rngs)
    self.positions = nnx.Param(nnx.initializers.normal(0.02)(
        rngs.params(), (config.length, config.d_model)))
    features = config.n_heads * config.d_head
    blocks = []
    for _ in range(config.n_layers):
      common = dict(qk_features=features, v_features=features, causal=True,
                    rngs=rngs)
      if n_hashes is None:
        attention = SelfAttention(config.n_heads, config.d_model, **common)
      else:
        attention = LSHSelfAttention(
            config.n_heads, config.d_model, n_hashes=n_hashes,
            chunk_len=config.chunk_len,
            n_chunks_before=config.n_chunks_before, **layout, **common)
      blocks.append(Block(config, attention, rngs=rngs))
    self.blocks = nnx.List(blocks)
    self.norm = nnx.LayerNorm(config.d_model, rngs=rngs)
    self.head = nnx.Linear(config.d_model, config.vocab_size, rngs=rngs)

  def __call__(self, tokens):
    x = self.embed(tokens) + self.positions[:tokens.shape[-1]]
    for block in self.blocks:
      x = block(x)
    return self.head(self.norm(x))


def shift_right(tokens):
  """The LM's input: a 0 first, the last token dropped."""
  return jnp.pad(tokens, ((0, 0), (1, 0)))[:, :-1]


def _loss(model, tokens, weights):
  logits = model(shift_right(tokens))
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)
  return jnp.sum(losses * weights) / jnp.sum(weights)


@nnx.jit
def train_step(model, optimizer, tokens, weights):
  """One Adam step on a batch; returns the loss on the copied half."""
  loss, grads = nnx.value_and_grad(_loss)(model, tokens, weights)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def _predict(model, tokens):
  return jnp.argmax(model(shift_right(tokens)), axis=-1)


def copy_accuracy(model, batches):
  """Token accuracy on the copied half (the model in eval mode)."""
  model.eval()  # the fixed hash key: the same numbers on every call
  correct = total = 0.0
  for tokens, weights in batches:
    predicted = np.asarray(_predict(model, jnp.asarray(tokens)))
    correct += float(np.sum((predicted == tokens) * weights))
    total += float(np.sum(weights))
  return correct / total


def train(config: CopyConfig = CopyConfig(), *, steps=1000, seed=0,
          log_every=100, out=None, mesh=None, sequence_axis=None,
          batch_axis=None):
  """Trains a CopyLM; prints `step | loss | accuracy | steps/s` lines.

  With a `mesh`, each batch is sharded: B over `batch_axis` (data
  parallel) and T over `sequence_axis` (sequence parallel, the attention's
  head exchange); the parameters are replicated.

  Returns:
    (model, losses: list of the training loss per step).
  """
  out = out or sys.stdout
  layout = {} if mesh is None else dict(
      mesh=mesh, sequence_axis=sequence_axis, batch_axis=batch_axis)
  model = CopyLM(config, rngs=nnx.Rngs(params=seed, hash=seed + 1), **layout)
  place = lambda x: jnp.asarray(x) if mesh is None else jax.device_put(
      x, jax.sharding.NamedSharding(
          mesh, jax.sharding.PartitionSpec(batch_axis, sequence_axis)))
  schedule = optax.linear_schedule(0.0, config.learning_rate,
                                   config.warmup_steps)
  optimizer = nnx.Optimizer(model, optax.adam(schedule), wrt=nnx.Param)
  if mesh is not None:
    # The position table [T, Dm] and its Adam moments are position-wise:
    # sharded over the sequence like the tokens, the rest replicated, as
    # every step returns them (the first step's program is the only one).
    def place_state(x):
      by_position = x.ndim and x.shape[0] == config.length
      spec = (jax.sharding.PartitionSpec(sequence_axis) if by_position
              else jax.sharding.PartitionSpec())
      return jax.device_put(x, jax.sharding.NamedSharding(mesh, spec))
    for tree in (model, optimizer):
      nnx.update(tree, jax.tree.map(place_state, nnx.state(tree)))
  rng = np.random.RandomState(seed)
  eval_batches = [copy_batch(np.random.RandomState(seed + 1000),
                             config.vocab_size, config.length,
                             config.batch_size)]
  losses, start, last = [], time.time(), time.time()
  for step in range(1, steps + 1):
    model.train()  # a fresh hash per call, as Trax re-hashes every step
    tokens, weights = copy_batch(rng, config.vocab_size, config.length,
                                 config.batch_size)
    losses.append(float(train_step(model, optimizer, place(tokens),
                                   place(weights))))
    if log_every and (step % log_every == 0 or step == steps):
      accuracy = copy_accuracy(model, eval_batches)
      rate = min(step, log_every) / max(time.time() - last, 1e-9)
      print(f'step {step:5d} | loss {np.mean(losses[-log_every:]):7.4f} | '
            f'eval accuracy {accuracy:7.2%} | {rate:5.1f} steps/s | '
            f'{time.time() - start:5.0f} s', file=out, flush=True)
      last = time.time()
  return model, losses


def evaluate(model, config: CopyConfig = CopyConfig(),
             n_hashes_list=(1, 2, 4, 8), *, dense=True, n_batches=4, seed=0):
  """Copy accuracy of `model`'s parameters with other n_hashes and dense.

  Each setting is a new CopyLM whose parameters are replaced by the
  trained ones (`nnx.update` with `nnx.state(model, nnx.Param)`); all see
  the same `n_batches` fresh batches.

  Returns:
    dict: setting name -> accuracy.
  """
  rng = np.random.RandomState(seed)
  batches = [copy_batch(rng, config.vocab_size, config.length,
                        config.batch_size) for _ in range(n_batches)]
  params = nnx.state(model, nnx.Param)
  settings = [(f'LSH, n_hashes={n}', n) for n in n_hashes_list]
  if dense:
    settings.append(('full attention (dense)', None))
  results = {}
  for name, n_hashes in settings:
    other = CopyLM(config, n_hashes=n_hashes,
                   rngs=nnx.Rngs(params=0, hash=seed))
    nnx.update(other, params)
    results[name] = copy_accuracy(other, batches)
  return results


def save(model, path):
  """Writes the parameters (`nnx.Param` state) as msgpack."""
  state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  with open(path, 'wb') as f:
    f.write(serialization.msgpack_serialize(jax.device_get(state)))


def restore(path, config: CopyConfig = CopyConfig(), *, n_hashes=-1):
  """A CopyLM (any n_hashes, or None for dense) with saved parameters."""
  model = CopyLM(config, n_hashes=n_hashes, rngs=nnx.Rngs(0))
  with open(path, 'rb') as f:
    state = serialization.msgpack_restore(f.read())
  params = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(params, state)
  nnx.update(model, params)
  return model


def run_demo(output_dir=None, steps=None, out=None):
  """`lsh-jax demo --framework flax`: train, save, tabulate n_hashes."""
  # The Trax demo's table format; that module imports Trax only in `run`.
  # pylint: disable=import-outside-toplevel
  from lsh_jax.apps import machine
  from lsh_jax.apps.commands import evaluate as evaluate_command
  out = out or sys.stdout
  config = CopyConfig()
  output_dir = output_dir or os.path.join(
      'runs', time.strftime('flax_copy-%Y%m%d-%H%M%S'))
  os.makedirs(output_dir, exist_ok=True)
  start = time.time()
  model, _ = train(config, steps=steps or 1000, out=out)
  trained = time.time()
  checkpoint = os.path.join(output_dir, 'params.msgpack')
  save(model, checkpoint)
  results = evaluate(restore(checkpoint, config), config)
  done = time.time()
  print(file=out)
  print(evaluate_command.format_table(config.length, results,
                                      config.n_hashes), file=out)
  print(file=out)
  print(f'{steps or 1000} training steps (Flax NNX, optax); wall time: '
        f'training {trained - start:.0f} s (with compilation), evaluation '
        f'{done - trained:.0f} s, total {done - start:.0f} s', file=out)
  print(f'machine: {machine.describe()}', file=out)
  print(f'parameters: {checkpoint}', file=out)
  return results
