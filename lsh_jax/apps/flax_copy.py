"""The copy task of `lsh-jax demo`, with the Flax ReformerLM and optax.

`lsh_jax.flax.ReformerLM` (reversible, causal LSH attention) learns the
Reformer paper's duplication task: sequences `0 w 0 w`, `w` random symbols
in [1, vocab_size - 2], loss and accuracy on the second `w` only, the part a
model can get right only by finding the first copy. The sizes are the Trax
demo's (configs/reformer_copy_cpu.gin, the same ReformerLM there): 64 tokens,
vocabulary 13, 2 layers of width 64, feed-forward 128, 2 heads of depth 32,
chunk 16 with one chunk back, 2 hash rounds, no dropout, batch 32, Adam at
1e-3 after 100 warm-up steps.

After training, the same parameters are evaluated with n_hashes 1, 2, 4, 8
and with dense attention (`lsh_jax.flax.SelfAttention`, the same
parameters), as `make demo` does. The checkpoint is a folder of two files,
neither of which can run code when read: `params.npz` (the `nnx.Param`
state, one array per parameter path such as `blocks/0/ff/w1/kernel`,
loaded with `allow_pickle=False`) and `config.json` (the `CopyConfig`).
"""
import dataclasses
import functools
import json
import os
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lsh_jax.apps.copy_data import copy_batch
from lsh_jax.flax import LSHSelfAttention
from lsh_jax.flax import ReformerLM
from lsh_jax.flax import SelfAttention
from lsh_jax.flax import generate

__all__ = [
    'CopyConfig', 'copy_accuracy', 'copy_model', 'evaluate', 'restore',
    'run_demo', 'sample', 'save', 'train', 'train_step'
]


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


def copy_model(config: CopyConfig, *, n_hashes: Optional[int] = -1,
               rngs: nnx.Rngs, **layout) -> ReformerLM:
  """The demo's ReformerLM; `n_hashes=None`: dense attention, same params.

  `layout` (mesh=, sequence_axis=, batch_axis=): sequence parallelism for
  tokens sharded along T (and B), passed to each `LSHSelfAttention`; the
  embeddings, norms and feed-forwards are position-wise and stay sharded
  (docs/scaling.md).
  """
  n_hashes = config.n_hashes if n_hashes == -1 else n_hashes
  attention = SelfAttention if n_hashes is None else functools.partial(
      LSHSelfAttention, n_hashes=n_hashes, chunk_len=config.chunk_len,
      n_chunks_before=config.n_chunks_before,
      # Every (example, head) pair at once: at these tiny sizes a loop over
      # pairs (the CPU default) costs more than it saves.
      n_parallel_heads=config.batch_size * config.n_heads, **layout)
  return ReformerLM(
      config.vocab_size, d_model=config.d_model, d_ff=config.d_ff,
      d_attention_key=config.d_head, d_attention_value=config.d_head,
      n_layers=config.n_layers, n_heads=config.n_heads, dropout=0.0,
      max_len=config.length, attention_type=attention, rngs=rngs)


def _loss(model, tokens, weights):
  logits = model(tokens)  # ReformerLM shifts right itself
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
  return jnp.argmax(model(tokens), axis=-1)


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
  """Trains the copy model; prints `step | loss | accuracy | steps/s` lines.

  With a `mesh`, each batch is sharded: B over `batch_axis` (data
  parallel) and T over `sequence_axis` (sequence parallel, the attention's
  head exchange); the parameters are replicated.

  Returns:
    (model, losses: list of the training loss per step).
  """
  out = out or sys.stdout
  layout = {} if mesh is None else dict(
      mesh=mesh, sequence_axis=sequence_axis, batch_axis=batch_axis)
  model = copy_model(config, rngs=nnx.Rngs(params=seed, hash=seed + 1),
                     **layout)
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
    # Found by path, not by a leading axis of size T: the demo's d_model
    # equals its length, so a size rule also sharded every [Dm, ...] kernel.
    def place_state(path, x):
      by_position = any(getattr(k, 'key', None) == 'positional'
                        for k in path)
      spec = (jax.sharding.PartitionSpec(sequence_axis) if by_position
              else jax.sharding.PartitionSpec())
      return jax.device_put(x, jax.sharding.NamedSharding(mesh, spec))
    for tree in (model, optimizer):
      nnx.update(tree, jax.tree_util.tree_map_with_path(
          place_state, nnx.state(tree)))
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

  Each setting is a new `copy_model` whose parameters are replaced by the
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
    other = copy_model(config, n_hashes=n_hashes,
                       rngs=nnx.Rngs(params=0, hash=seed))
    nnx.update(other, params)
    results[name] = copy_accuracy(other, batches)
  return results


def _flatten(tree, prefix=''):
  for name, value in tree.items():
    path = f'{prefix}{name}'
    if isinstance(value, dict):
      yield from _flatten(value, path + '/')
    else:
      yield path, np.asarray(value)


def _unflatten(arrays):
  tree = {}
  for path, value in arrays.items():
    node, parts = tree, [int(p) if p.isdigit() else p
                         for p in path.split('/')]
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = value
  return tree


def save(model, config: CopyConfig, directory):
  """Writes `params.npz` and `config.json` into `directory`."""
  os.makedirs(directory, exist_ok=True)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  np.savez(os.path.join(directory, 'params.npz'), **dict(_flatten(params)))
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    json.dump(dataclasses.asdict(config), f, indent=1)


def restore(directory, *, n_hashes=-1):
  """(model, config) from `save`'s folder, with any n_hashes (None: dense).

  Reads only JSON and NumPy arrays (`allow_pickle=False`): nothing in the
  folder can run code.
  """
  for name in ('params.npz', 'config.json'):
    if not os.path.exists(os.path.join(directory, name)):
      raise FileNotFoundError(f'{directory} has no {name}: not a folder '
                              'written by `lsh-jax demo --framework flax`')
  with open(os.path.join(directory, 'config.json')) as f:
    config = CopyConfig(**json.load(f))
  model = copy_model(config, n_hashes=n_hashes, rngs=nnx.Rngs(0))
  with np.load(os.path.join(directory, 'params.npz'),
               allow_pickle=False) as arrays:
    saved = _unflatten({name: arrays[name] for name in arrays.files})
  params = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(params, saved)
  nnx.update(model, params)
  return model, config


def sample(directory, *, n_examples=8, seed=0, n_hashes=-1):
  """Greedy copies from a saved model: `0 w 0` given, the second `w` decoded.

  Returns:
    dict: tokens [n_examples, T], prefix_len, samples [n_examples,
    T - prefix_len], accuracy (fraction of decoded tokens equal to `w`).
  """
  model, config = restore(directory, n_hashes=n_hashes)
  model.eval()
  tokens, _ = copy_batch(np.random.RandomState(seed), config.vocab_size,
                         config.length, n_examples)
  prefix_len = config.length // 2 + 1  # 0 w 0
  # Decoding with the caches: the prefix in one call, then a token a call.
  samples = np.asarray(generate(model, jnp.asarray(tokens[:, :prefix_len]),
                                config.length - prefix_len))
  accuracy = float(np.mean(samples == tokens[:, prefix_len:]))
  return dict(tokens=tokens, prefix_len=prefix_len, samples=samples,
              accuracy=accuracy)


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
  save(model, config, output_dir)
  results = evaluate(restore(output_dir)[0], config)
  done = time.time()
  print(file=out)
  print(evaluate_command.format_table(config.length, results,
                                      config.n_hashes), file=out)
  print(file=out)
  print(f'{steps or 1000} training steps (Flax NNX ReformerLM, reversible, '
        f'optax); wall time: '
        f'training {trained - start:.0f} s (with compilation), evaluation '
        f'{done - trained:.0f} s, total {done - start:.0f} s', file=out)
  print(f'machine: {machine.describe()}', file=out)
  print(f'checkpoint: {output_dir} (lsh-jax sample --framework flax '
        f'{output_dir})', file=out)
  return results
