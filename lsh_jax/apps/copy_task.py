"""Train a model from a gin config with Trax's loop; measure copy accuracy.

The copy (duplication) task of the Reformer paper: sequences `0 w 0 w`,
`w` random symbols in [1, vocab_size - 2], as made by
`trax.data.inputs.sequence_copy_inputs`. A language model sees the sequence
shifted right; its accuracy is measured on the second `w`, the part that can
only be predicted by finding the first copy: `copy_accuracy`.

`train` runs `trax.supervised.trainer_lib.train` (Trax's `training.Loop`)
from a parsed config, prints one progress line per evaluation and keeps
Trax's own log in `<output_dir>/train_log.txt`. `evaluate_n_hashes` reloads
the trained weights into the config's model with other `n_hashes` (and into
dense attention) and measures copy accuracy: the paper's table.
"""
import contextlib
import os
import sys
import time
import warnings

import gin
import jax
import jax.numpy as jnp
import numpy as np
import trax  # noqa: F401  (registers Trax's configurables for the configs)
from trax import shapes
from trax.supervised import callbacks
from trax.supervised import trainer_lib

from lsh_jax.apps.copy_data import copy_batch
import lsh_jax.trax  # noqa: F401  (registers lsh_jax.* for the configs)

__all__ = [
    'ConfigError', 'copy_accuracy', 'copy_task_params',
    'duplication_inputs', 'evaluate_n_hashes', 'parse_config', 'query',
    'train'
]


class ConfigError(ValueError):
  """A config file that does not exist or does not parse."""


def parse_config(config, bindings=()):
  """Clears gin and parses `config` plus extra `bindings` ('A.b = 1').

  Raises:
    ConfigError: one line saying what is wrong.
  """
  if not os.path.isfile(config):
    raise ConfigError(f'config file not found: {config}')
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings([config], list(bindings))
  except Exception as error:  # gin raises many types; all are config errors
    gin.clear_config()
    message = str(error).strip().splitlines()[0] if str(error).strip() else (
        type(error).__name__)
    raise ConfigError(f'invalid config {config}: {message}') from None


class _Progress(callbacks.TrainingStepCallback):
  """Prints `step | train loss | eval loss | eval accuracy | steps/s`.

  Trax's loop evaluates after step 1 and every `eval_frequency` steps; the
  line for an evaluation at step s is printed before step s + 1 runs (and
  by `train` after the last step).
  """

  def __init__(self, loop, out):
    super().__init__(loop)
    self._out = out
    self._start = time.time()
    self._train_time = 0.0
    self._n_steps = 0
    self._step_start = None

  def call_at(self, step):
    return True

  def on_step_begin(self, step):
    self.report(step - 1)
    self._step_start = time.time()

  def on_step_end(self, step):
    self._train_time += time.time() - self._step_start
    self._n_steps += 1

  def report(self, step):
    history = self._loop.history
    accuracy = _last(history, 'eval', 'metrics/accuracy', step)
    if accuracy is None:
      return
    loss_name = 'metrics/' + self._loop.tasks[0].loss_name
    train_loss = _last(history, 'train', loss_name, step)
    eval_loss = _last(history, 'eval', 'metrics/loss', step)
    rate = self._n_steps / max(self._train_time, 1e-9)
    print(f'step {step:6d} | train loss {train_loss:7.4f} | eval loss '
          f'{eval_loss:7.4f} | eval accuracy {accuracy:6.2%} | '
          f'{rate:5.2f} steps/s | {time.time() - self._start:6.0f} s',
          file=self._out, flush=True)
    self._train_time, self._n_steps = 0.0, 0


def _last(history, mode, metric, step):
  """The value of `metric` logged at `step`, or None."""
  if metric not in history.metrics_for_mode(mode):
    return None
  values = history.get(mode, metric)
  return values[-1][1] if values and values[-1][0] == step else None


def train(config, output_dir, *, steps=None, bindings=(), out=None):
  """Trains the config's `train.model` with Trax's loop.

  Args:
    config: path of a gin file binding `train.*` (Trax's trainer_lib).
    output_dir: run folder: checkpoint `model.pkl.gz`, `config.gin`,
      `train_log.txt`. A folder that holds a checkpoint is resumed (Trax).
    steps: overrides `train.steps`.
    bindings: extra gin bindings.
    out: stream for the progress lines (default stdout).

  Returns:
    The finished `trax.supervised.training.Loop`.
  """
  out = out or sys.stdout
  if steps is not None:
    bindings = list(bindings) + [f'train.steps = {int(steps)}']
  parse_config(config, bindings)
  os.makedirs(output_dir, exist_ok=True)
  progress = []  # the callback instance the loop creates
  make_progress = lambda loop: progress.append(_Progress(loop, out)) or (
      progress[-1])
  log_path = os.path.join(output_dir, 'train_log.txt')
  with open(log_path, 'a') as log, contextlib.redirect_stdout(log), \
      warnings.catch_warnings():
    warnings.simplefilter('ignore')  # Trax's deprecation and gzip warnings
    loop = trainer_lib.train(output_dir=output_dir,
                             callbacks=[make_progress])
    loop.save_checkpoint('model')
  if progress:
    progress[-1].report(loop.step)
  return loop


def query(binding):
  """A bound value, with a macro (`%name`) evaluated."""
  value = gin.query_parameter(binding)
  if isinstance(value, gin.config.ConfigurableReference):
    value = value.scoped_configurable_fn()
  return value


@gin.configurable(module='lsh_jax')
def duplication_inputs(vocab_size=gin.REQUIRED, batch_size=gin.REQUIRED,
                       length=gin.REQUIRED):
  """The paper's duplication task: `0 w 0 w` of exactly `length` tokens.

  Like `trax.data.sequence_copy_inputs` but every example has the full
  length (Trax's draws lengths 4..2 * train_length). Draws from NumPy's
  global generator, which Trax's loop seeds with `train.random_seed`.

  Returns:
    `trax.data.inputs.Inputs` with (tokens, tokens, weights) batches.
  """
  def stream(unused_n_devices):
    while True:
      tokens, weights = copy_batch(np.random, vocab_size, length, batch_size)
      yield tokens, tokens, weights
  return trax.data.inputs.Inputs(train_stream=stream, eval_stream=stream)


def copy_accuracy(model, batches):
  """Token accuracy of `model` (a Trax LM in eval mode) on copied tokens."""
  correct = total = 0.0
  for tokens, weights in batches:
    logits = model(jnp.asarray(tokens))
    predicted = np.asarray(jnp.argmax(logits, axis=-1))
    correct += float(np.sum((predicted == tokens) * weights))
    total += float(np.sum(weights))
  return correct / total


def copy_task_params():
  """(vocab_size, longest eval length) of the parsed config's copy task."""
  try:
    return (int(query('duplication_inputs.vocab_size')),
            int(query('duplication_inputs.length')))
  except ValueError:  # not bound: Trax's sequence_copy_inputs
    return (int(query('sequence_copy_inputs.vocab_size')),
            2 * int(query('sequence_copy_inputs.eval_max_length')))


def evaluate_n_hashes(config, checkpoint, n_hashes_list=(1, 2, 4, 8), *,
                      bindings=(), batch_size=32, n_batches=4, seed=0,
                      dense=True):
  """Copy accuracy of trained weights evaluated with other `n_hashes`.

  The model is the config's `train.model` in eval mode with
  `lsh_jax.LSHSelfAttention.n_hashes` rebound; its weights come from
  `checkpoint` (state, i.e. hash keys, is fresh: its shape depends on
  n_hashes). With `dense`, the same weights also run in
  `lsh_jax.trax.SelfAttention` with shared QK: the full attention
  that LSH approximates. All settings see the same `n_batches` batches of
  `0 w 0 w` at the config's longest eval length.

  Returns:
    (length, dict: setting name -> accuracy).
  """
  parse_config(config, bindings)
  vocab_size, length = copy_task_params()
  rng = np.random.RandomState(seed)
  batches = [copy_batch(rng, vocab_size, length, batch_size)
             for _ in range(n_batches)]
  runs = [(f'LSH, n_hashes={n}',
           [f'lsh_jax.LSHSelfAttention.n_hashes = {n}']) for n in n_hashes_list]
  if dense:
    runs.append(('full attention (dense)', [
        'ReformerLM.attention_type = @lsh_jax.SelfAttention',
        'lsh_jax.SelfAttention.share_qk = True']))
  signature = shapes.ShapeDtype((batch_size, length), jnp.int32)
  results = {}
  for name, overrides in runs:
    parse_config(config, list(bindings) + overrides)
    model = gin.query_parameter('train.model').scoped_configurable_fn(
        mode='eval')
    model.init_from_file(checkpoint, weights_only=True,
                         input_signature=signature)
    model.rng = jax.random.PRNGKey(seed)
    results[name] = copy_accuracy(model, batches)
  parse_config(config, bindings)
  return length, results
