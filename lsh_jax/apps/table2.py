"""The Reformer paper's Table 2: LSH attention on the duplication task.

Kitaev, Kaiser, Levskaya (2020), section 5: sequences `0 w 0 w` (`w` a
string of symbols from 1..V-1), loss and accuracy on the second `w` only;
a 1-layer Transformer (d_model = d_ff = 256, 4 heads) trained four times,
with full attention and with LSH attention of 1, 2 and 4 rounds, and each
model evaluated with full attention and with LSH-8, -4, -2, -1.

Here the four models are built from lsh_jax's Trax layers: LSH rows with
`lsh_jax.trax.LSHSelfAttention`, the full-attention row (and column) with
`lsh_jax.trax.SelfAttention(share_qk=True)` on the same weights, so that a
model trained with one evaluates with the other. A third row set evaluates
every trained model with the paper's exact multi-round attention,
`allow_duplicate_attention=False` (docs/paper.md).

Everything lands in one run folder: `<model>/model.pkl` (weights, state,
optimizer state and step, written every `eval_every` steps; a rerun resumes
from them),
`results.json` (each finished table cell; a rerun skips them), `table2.md`
and `table2.png`.
"""
import dataclasses
import json
import os
import pickle
import sys
import time
import warnings

import numpy as np

__all__ = [
    'DEFAULT', 'EVALUATED', 'EXACT', 'NAMES', 'PAPER', 'PAPER_TABLE',
    'SIZES', 'Settings', 'TINY', 'TRAINED', 'attention_layer',
    'build_model', 'evaluate', 'format_table', 'main', 'plot', 'report',
    'run_table', 'train_model'
]

# The paper's Table 2 (accuracy on the copied half), rows = trained with,
# columns = evaluated with.
PAPER_TABLE = {
    'full': {'full': 1.000, 'lsh8': 0.948, 'lsh4': 0.925, 'lsh2': 0.769,
             'lsh1': 0.525},
    'lsh4': {'full': 0.008, 'lsh8': 1.000, 'lsh4': 0.999, 'lsh2': 0.994,
             'lsh1': 0.919},
    'lsh2': {'full': 0.008, 'lsh8': 1.000, 'lsh4': 0.999, 'lsh2': 0.981,
             'lsh1': 0.868},
    'lsh1': {'full': 0.008, 'lsh8': 0.999, 'lsh4': 0.996, 'lsh2': 0.948,
             'lsh1': 0.779},
}
TRAINED = ('full', 'lsh4', 'lsh2', 'lsh1')
EVALUATED = ('full', 'lsh8', 'lsh4', 'lsh2', 'lsh1')
EXACT = ('lsh8x', 'lsh4x', 'lsh2x', 'lsh1x')  # allow_duplicate_attention=False
NAMES = {'full': 'Full', **{f'lsh{n}': f'LSH-{n}' for n in (1, 2, 4, 8)},
         **{f'lsh{n}x': f'LSH-{n} exact' for n in (1, 2, 4, 8)}}


@dataclasses.dataclass(frozen=True)
class Settings:
  """One size of the experiment (the paper's, or a smaller one)."""
  length: int  # L = 2 * (len(w) + 1)
  vocab_size: int  # symbols 1..vocab_size - 1, and 0
  d_model: int
  d_ff: int
  n_heads: int
  d_head: int  # d_qk = d_v per head
  chunk_len: int
  n_buckets: int  # per round
  steps: int
  batch_size: int
  learning_rate: float
  warmup_steps: int
  eval_every: int  # steps between progress lines and checkpoints
  eval_batches: int  # batches per table cell
  n_chunks_before: int = 1


# The paper: 1 layer, d_model = d_ff = 256, 4 heads, L = 1024, 127 symbols,
# 150K steps. Chunk length and buckets follow Trax's LSH defaults for this
# length (chunk 64, 2 buckets per chunk); batch size and learning rate are
# not given in the paper: ours.
PAPER = Settings(length=1024, vocab_size=128, d_model=256, d_ff=256,
                 n_heads=4, d_head=64, chunk_len=64, n_buckets=32,
                 steps=150_000, batch_size=16, learning_rate=1e-3,
                 warmup_steps=1000, eval_every=1000, eval_batches=8)
# The default: the paper's model width, heads and vocabulary at L = 64
# (8 chunks of 8 per round, 16 buckets: the paper's 2 buckets per chunk)
# and 3,000 steps of 16 sequences, sized for about half an hour for all
# four models on an idle 2-core CPU. Every model sits at chance loss, then
# learns the copy abruptly: full attention after ~550 steps, LSH-4 after
# ~1,550 (1,000 steps left the LSH rows at chance). See docs/paper.md.
DEFAULT = dataclasses.replace(PAPER, length=64, chunk_len=8, n_buckets=16,
                              steps=3000, batch_size=16, learning_rate=2e-3,
                              warmup_steps=100, eval_every=100,
                              eval_batches=8)
# A smoke test: seconds per model.
TINY = dataclasses.replace(PAPER, length=32, vocab_size=16, d_model=32,
                           d_ff=32, n_heads=2, d_head=16, chunk_len=4,
                           n_buckets=8, steps=4, batch_size=4,
                           learning_rate=1e-3, warmup_steps=1, eval_every=2,
                           eval_batches=1)
SIZES = {'default': DEFAULT, 'paper': PAPER, 'tiny': TINY}


def attention_layer(settings, setting, mode):
  """The attention layer of a row or column name ('full', 'lsh4', 'lsh4x')."""
  import lsh_jax.trax  # pylint: disable=import-outside-toplevel
  common = dict(n_heads=settings.n_heads, d_qk=settings.d_head,
                d_v=settings.d_head, causal=True, mode=mode)
  if setting == 'full':
    return lsh_jax.trax.SelfAttention(share_qk=True, **common)
  exact = setting.endswith('x')
  n_hashes = int(setting[3:].rstrip('x'))
  extra = {'allow_duplicate_attention': False} if exact else {}
  return lsh_jax.trax.LSHSelfAttention(
      chunk_len=settings.chunk_len, n_chunks_before=settings.n_chunks_before,
      n_chunks_after=0, n_hashes=n_hashes, n_buckets=settings.n_buckets,
      n_parallel_heads=None, **common, **extra)


def build_model(settings, setting, mode='train'):
  """A 1-layer pre-norm Transformer LM: float logits [B, L, V]."""
  from trax import layers as tl  # pylint: disable=import-outside-toplevel
  return tl.Serial(
      tl.ShiftRight(mode=mode),
      tl.Embedding(settings.vocab_size, settings.d_model),
      tl.PositionalEncoding(max_len=settings.length, mode=mode),
      tl.Residual(tl.LayerNorm(), attention_layer(settings, setting, mode)),
      tl.Residual(tl.LayerNorm(), tl.Dense(settings.d_ff), tl.Relu(),
                  tl.Dense(settings.d_model)),
      tl.LayerNorm(),
      tl.Dense(settings.vocab_size),
  )


def _loss_and_accuracy(logits, tokens, weights):
  """Weighted cross-entropy and accuracy on the copied half (scalars)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
  total = jnp.sum(weights)
  loss = -jnp.sum(picked * weights) / total
  hits = (jnp.argmax(logits, axis=-1) == tokens).astype(jnp.float32)
  return loss, jnp.sum(hits * weights) / total


def _train_step_fn(model, optimizer):
  """A jit-compiled step: (params, opt_state, batch, rng) -> updated, metrics.

  params = (weights, state): the LSH layer's state (its hash keys) moves on
  every step, as in Trax's training loop.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  def loss_fn(weights, state, tokens, loss_weights, rng):
    logits, new_state = model.pure_fn(tokens, weights, state, rng)
    loss, accuracy = _loss_and_accuracy(logits, tokens, loss_weights)
    return loss, (new_state, accuracy)

  @jax.jit
  def step(weights, state, opt_state, tokens, loss_weights, rng):
    (loss, (state, accuracy)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(weights, state, tokens, loss_weights, rng)
    updates, opt_state = optimizer.update(grads, opt_state, weights)
    return (optax.apply_updates(weights, updates), state, opt_state, loss,
            accuracy)
  return step


def _save(path, payload):
  """Writes a pickle atomically: an interruption leaves the old one whole."""
  import jax  # pylint: disable=import-outside-toplevel
  payload = jax.tree_util.tree_map(np.asarray, payload)
  with open(path + '.tmp', 'wb') as f:
    pickle.dump(payload, f)
  os.replace(path + '.tmp', path)


def _load(path):
  with open(path, 'rb') as f:
    return pickle.load(f)


def train_model(settings, setting, folder, *, seed=0, out=sys.stdout):
  """Trains (or resumes) one model in `folder`; returns its checkpoint path.

  Adam with linear warm-up, batches of fresh `0 w 0 w` sequences, the loss
  on the copied half. The checkpoint `folder/model.pkl` (weights, state,
  optimizer state, step) is written every `eval_every` steps; a rerun
  continues from it with the data stream it would have seen. Progress: one
  line per `eval_every` steps (mean loss and copy accuracy of those steps'
  training batches, steps/s).
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from trax import shapes  # pylint: disable=import-outside-toplevel
  checkpoint = os.path.join(folder, 'model.pkl')
  os.makedirs(folder, exist_ok=True)
  model = build_model(settings, setting, 'train')
  schedule = optax.linear_schedule(0.0, settings.learning_rate,
                                   settings.warmup_steps)
  optimizer = optax.adam(schedule)
  if os.path.exists(checkpoint):
    saved = _load(checkpoint)
    if saved['step'] >= settings.steps:
      return checkpoint
    weights, state, opt_state, step = (saved['weights'], saved['state'],
                                       saved['opt_state'], saved['step'])
    print(f'  {NAMES[setting]}: resumed at step {step}', file=out,
          flush=True)
  else:
    model.rng = jax.random.PRNGKey(seed)
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      model.init(shapes.ShapeDtype((settings.batch_size, settings.length),
                                   jnp.int32))
    weights, state, step = model.weights, model.state, 0
    opt_state = optimizer.init(weights)
  train_step = _train_step_fn(model, optimizer)
  start = time.time()
  while step < settings.steps:
    tick, losses, accuracies = time.time(), [], []
    n_steps = min(settings.eval_every - step % settings.eval_every,
                  settings.steps - step)
    for _ in range(n_steps):
      # The data of step s depends only on (seed, s): resuming is exact.
      rng = np.random.RandomState([seed, step])
      tokens, loss_weights = _copy_batch(settings, rng)
      weights, state, opt_state, loss, accuracy = train_step(
          weights, state, opt_state, tokens, loss_weights,
          jax.random.PRNGKey(step))
      losses.append(loss)
      accuracies.append(accuracy)
      step += 1
    _save(checkpoint, dict(weights=weights, state=state, opt_state=opt_state,
                           step=step, setting=setting))
    print(f'  {NAMES[setting]}: step {step:6d}/{settings.steps} | train loss '
          f'{float(np.mean(losses)):7.4f} | accuracy '
          f'{float(np.mean(accuracies)):6.1%} | '
          f'{n_steps / (time.time() - tick):5.2f} steps/s | '
          f'{time.time() - start:5.0f} s', file=out, flush=True)
  return checkpoint


def _copy_batch(settings, rng):
  """(tokens int32[B, L], weights float32[B, L]) of `0 w 0 w` sequences."""
  from lsh_jax.apps import copy_task  # pylint: disable=import-outside-toplevel
  return copy_task.copy_batch(rng, settings.vocab_size + 1, settings.length,
                              settings.batch_size)


def evaluate(settings, checkpoints, setting, *, seed=1):
  """Accuracy on the copied half of `eval_batches` fresh batches.

  One model with `setting`'s attention, compiled once, runs every
  checkpoint's weights on the same sequences and hash keys.

  Returns:
    {name: accuracy} for checkpoints {name: path}.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from trax import shapes  # pylint: disable=import-outside-toplevel
  model = build_model(settings, setting, 'eval')
  signature = shapes.ShapeDtype((settings.batch_size, settings.length),
                                jnp.int32)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    model.init(signature)
  forward = jax.jit(model.pure_fn)
  rng = np.random.RandomState(seed)
  batches = [_copy_batch(settings, rng)
             for _ in range(settings.eval_batches)]
  # Fresh hash rotations for every batch: the state's keys, re-drawn.
  states = [_fresh_state(model, seed * 1000 + index)
            for index in range(settings.eval_batches)]
  accuracies = {}
  for name, checkpoint in checkpoints.items():
    trained_weights = _load(checkpoint)['weights']
    correct = total = 0.0
    for (tokens, weights), state in zip(batches, states):
      logits, _ = forward(jnp.asarray(tokens), trained_weights, state,
                          jax.random.PRNGKey(seed))
      predicted = np.asarray(jnp.argmax(logits, -1))
      correct += float(np.sum((predicted == tokens) * weights))
      total += float(np.sum(weights))
    accuracies[name] = correct / total
  return accuracies


def _fresh_state(model, seed):
  """The model's state with every hash key replaced by one from `seed`."""
  import jax  # pylint: disable=import-outside-toplevel
  keys = iter(jax.random.split(jax.random.PRNGKey(seed), 1024))

  def renew(state):
    if isinstance(state, (tuple, list)):
      if (len(state) == 2 and hasattr(state[1], 'dtype')
          and state[1].dtype == np.uint32 and state[1].shape[-1:] == (2,)):
        # An LSH layer's (buckets, keys [pairs, 2]): new keys, same shape.
        new = jax.random.split(next(keys), int(np.prod(state[1].shape[:-1])))
        return (state[0], new.reshape(state[1].shape))
      return type(state)(renew(s) for s in state)
    return state
  return renew(model.state)


def run_table(settings, folder, *, exact=True, out=sys.stdout,
              rows=TRAINED, columns=None):
  """Trains the four models and fills the table; returns the results dict.

  results[trained][evaluated] = accuracy; already finished cells (in
  `folder/results.json`) are kept, already trained models resumed. `rows`
  and `columns` choose a part of the table (default: all of it).
  """
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, 'results.json')
  results = {}
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved.get('settings') == dataclasses.asdict(settings):
      results = saved['results']
    else:
      print(f'{path} holds another size: starting the table afresh',
            file=out, flush=True)
  if columns is None:
    columns = EVALUATED + (EXACT if exact else ())
  checkpoints = {}
  for trained in rows:
    print(f'training {NAMES[trained]} ({settings.steps} steps)', file=out,
          flush=True)
    checkpoints[trained] = train_model(settings, trained,
                                       os.path.join(folder, trained), out=out)
  for evaluated in columns:
    todo = {t: checkpoints[t] for t in rows
            if evaluated not in results.get(t, {})}
    if not todo:
      continue
    for trained, accuracy in evaluate(settings, todo, evaluated).items():
      results.setdefault(trained, {})[evaluated] = accuracy
      print(f'  trained {NAMES[trained]:6s} evaluated {NAMES[evaluated]:12s}'
            f' {accuracy:6.1%}', file=out, flush=True)
    with open(path, 'w') as f:
      json.dump({'settings': dataclasses.asdict(settings),
                 'results': results}, f, indent=1)
  return results


def format_table(results, columns=EVALUATED):
  """Markdown: ours, the paper's and the difference (percentage points)."""
  head = '| train \\ eval | ' + ' | '.join(NAMES[c] for c in columns) + ' |'
  lines = [head, '|---' * (len(columns) + 1) + '|']
  for trained in TRAINED:
    cells = []
    for evaluated in columns:
      ours = results.get(trained, {}).get(evaluated)
      paper = PAPER_TABLE[trained].get(evaluated.rstrip('x'))
      if ours is None:
        cells.append('-')
      elif evaluated.endswith('x'):
        plain = results[trained].get(evaluated[:-1])
        change = '' if plain is None else f' ({100 * (ours - plain):+.1f})'
        cells.append(f'{ours:.1%}{change}')
      else:
        cells.append(f'{ours:.1%} / {paper:.1%} ({100 * (ours - paper):+.1f})')
    lines.append(f'| {NAMES[trained]} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def report(settings, results, wall_s):
  """The printed and saved report: both tables and what they mean."""
  s = settings
  return '\n'.join([
      f'Table 2, duplication task: L = {s.length}, symbols 1..'
      f'{s.vocab_size - 1}, 1 layer, d_model {s.d_model}, d_ff {s.d_ff}, '
      f'{s.n_heads} heads, chunk {s.chunk_len}, {s.n_buckets} buckets, '
      f'{s.steps} steps of batch {s.batch_size}; accuracy on the copied '
      f'half, {s.eval_batches * s.batch_size} fresh sequences per cell.',
      '', 'ours / paper (difference in points):', '',
      format_table(results),
      '', 'evaluated with exact multi-round attention '
      '(allow_duplicate_attention=False; change from the plain column):', '',
      format_table(results, EXACT),
      '', f'wall time {wall_s / 60:.1f} min'])


def plot(results, path):
  """Our table and the paper's as two heat maps."""
  from lsh_jax.apps import plots  # pylint: disable=import-outside-toplevel
  figure = plots._figure(10, 3.6)  # pylint: disable=protected-access
  for index, (title, table) in enumerate((('ours', results),
                                          ('paper', PAPER_TABLE))):
    axis = figure.add_subplot(1, 2, index + 1)
    grid = np.array([[table.get(t, {}).get(e, np.nan) for e in EVALUATED]
                     for t in TRAINED])
    axis.imshow(grid, vmin=0, vmax=1, cmap='viridis')
    for (row, column), value in np.ndenumerate(grid):
      if not np.isnan(value):
        axis.text(column, row, f'{value:.0%}', ha='center', va='center',
                  color='white' if value < 0.6 else 'black')
    axis.set_xticks(range(len(EVALUATED)), [NAMES[e] for e in EVALUATED])
    axis.set_yticks(range(len(TRAINED)), [NAMES[t] for t in TRAINED])
    axis.set_xlabel('evaluated with')
    axis.set_ylabel('trained with')
    axis.set_title(f'{title}: copy accuracy')
  figure.tight_layout()
  return plots._save(figure, path)  # pylint: disable=protected-access


def main(settings, folder, *, exact=True, out=sys.stdout, **part):
  """Runs everything; writes table2.md and table2.png; returns the report.

  `part`: `rows` and `columns` of `run_table`, for a part of the table.
  """
  start = time.time()
  results = run_table(settings, folder, exact=exact, out=out, **part)
  text = report(settings, results, time.time() - start)
  with open(os.path.join(folder, 'table2.md'), 'w') as f:
    f.write(text + '\n')
  plot(results, os.path.join(folder, 'table2.png'))
  return text
