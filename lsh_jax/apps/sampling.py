"""Greedy sampling of a trained copy model with fast decoding (imports Trax).

The model of a run folder is rebuilt in `mode='predict'` (our LSH layer
decodes incrementally, `lsh_jax.trax.predict`), given `0 w 0` of a fresh
copy sequence as its prefix, and sampled greedily with Trax's
`trax.supervised.decoding.autoregressive_sample`; its accuracy is the
fraction of the second `w` it reproduces.

The layer's memory is bound to the task length (`predict_mem_len` =
`predict_drop_len` = sequence length), so the prefix call attends over a
window of the training length and every decoded token can see the whole
sequence; gin bindings passed by the caller come after and win.
"""
import os
import warnings

import gin
import jax
import jax.numpy as jnp
import numpy as np
from trax import shapes
from trax.supervised import decoding

from lsh_jax.apps import copy_task

__all__ = ['LAYER', 'greedy_copy', 'predict_model', 'run_dir_files']

LAYER = 'lsh_jax.LSHSelfAttention'


def predict_model(config, checkpoint, *, batch_size, bindings=()):
  """The config's `train.model` in predict mode with the checkpoint's weights.

  Returns:
    (model, vocab_size, length).
  """
  copy_task.parse_config(config, bindings)
  vocab_size, length = copy_task.copy_task_params()
  memory = [f'{LAYER}.predict_mem_len = {length}',
            f'{LAYER}.predict_drop_len = {length}']
  copy_task.parse_config(config, memory + list(bindings))
  model = gin.query_parameter('train.model').scoped_configurable_fn(
      mode='predict')
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # Trax's gzip FutureWarning
    model.init_from_file(checkpoint, weights_only=True,
                         input_signature=shapes.ShapeDtype((batch_size, 1),
                                                           jnp.int32))
  model.weights = jax.tree_util.tree_map(jnp.asarray, model.weights)
  return model, vocab_size, length


def greedy_copy(config, checkpoint, *, n_examples=8, seed=0, bindings=()):
  """Greedy samples of the copy model on fresh `0 w 0 w` sequences.

  Returns:
    dict: `tokens` int[B, L] the sequences, `prefix_len` (the `0 w 0`
    given), `samples` int[B, L - prefix_len] the continuation sampled,
    `accuracy` the fraction of samples equal to the second `w`.
  """
  model, vocab_size, length = predict_model(
      config, checkpoint, batch_size=n_examples, bindings=bindings)
  tokens, _ = copy_task.copy_batch(np.random.RandomState(seed), vocab_size,
                                   length, n_examples)
  prefix_len = length // 2 + 1  # 0 w 0
  model.rng = jax.random.PRNGKey(seed)
  # The model was trained on sequences shifted right behind a 0: the start
  # symbol 0 comes first, the prefix then leads to the second w.
  samples = decoding.autoregressive_sample(
      model, inputs=tokens[:, :prefix_len], batch_size=n_examples,
      temperature=0.0, start_id=0, eos_id=-1,
      max_length=length - prefix_len)
  samples = np.asarray(samples)
  accuracy = float(np.mean(samples == tokens[:, prefix_len:]))
  return dict(tokens=tokens, prefix_len=prefix_len, samples=samples,
              accuracy=accuracy)


def run_dir_files(run_dir):
  """(config.gin, model.pkl.gz) of a run folder; FileNotFoundError."""
  paths = [os.path.join(run_dir, name) for name in ('config.gin',
                                                      'model.pkl.gz')]
  for path in paths:
    if not os.path.isfile(path):
      raise FileNotFoundError(f'file not found: {path}')
  return paths
