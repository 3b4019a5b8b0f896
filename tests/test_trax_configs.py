"""Every packaged gin file (configs/*.gin) parses and builds; gin names.

Expected values: the configs' own bindings (the data batch feeds the model,
the LSH configs put lsh_jax's layer in the model) and gin's documented
behaviour for bindings of other modules.
"""
import glob
import os

import gin
import pytest

from lsh_jax.apps import commands
from trax_testing import trax_env  # noqa: F401  (fixture)

CONFIGS = sorted(glob.glob(os.path.join(commands.CONFIG_DIR, '*.gin')))


@pytest.fixture(autouse=True)
def clean_gin():
  yield
  gin.clear_config()


def sublayers(layer):
  yield layer
  for sub in layer.sublayers:
    yield from sublayers(sub)


def test_the_expected_configs_exist():
  names = {os.path.basename(path) for path in CONFIGS}
  assert {'reformer_copy.gin', 'reformer_copy_cpu.gin', 'transformer_copy.gin',
          'transformer_copy_cpu.gin', 'lab_lsh_layer.gin'} <= names


@pytest.mark.parametrize('config', CONFIGS, ids=os.path.basename)
def test_config_parses_and_builds_its_model(trax_env, config):
  from lsh_jax.apps import copy_task  # pylint: disable=import-outside-toplevel
  copy_task.parse_config(config)
  inputs = gin.query_parameter('train.inputs').scoped_configurable_fn()
  tokens, targets, weights = next(inputs.train_stream(1))
  assert tokens.shape == targets.shape == weights.shape
  model = gin.query_parameter('train.model').scoped_configurable_fn(
      mode='train')
  model.init(trax_env.shapes.signature(tokens[:2]))
  vocab_size, _ = copy_task.copy_task_params()
  output = model.output_signature(trax_env.shapes.signature(tokens[:2]))
  assert output.shape == tokens[:2].shape + (vocab_size,)
  lsh_layers = [layer for layer in sublayers(model)
                if isinstance(layer, trax_env.ours.LSHSelfAttention)]
  assert bool(lsh_layers) == ('reformer' in config or 'lab' in config)
  assert not [layer for layer in sublayers(model)
              if type(layer).__name__ == 'LSHSelfAttention'
              and not isinstance(layer, trax_env.ours.LSHSelfAttention)]


def test_gin_names_are_lsh_jax_and_do_not_mix_with_trax(trax_env):
  """`lsh_jax.LSHSelfAttention.*` configures ours only; Trax's bindings do
  not reach it, and the bare name is ambiguous, so gin refuses it."""
  gin.parse_config(['lsh_jax.LSHSelfAttention.n_hashes = 3',
                    'trax.layers.LSHSelfAttention.n_hashes = 5',
                    'lsh_jax.SelfAttention.share_qk = True'])
  assert trax_env.ours.LSHSelfAttention()._n_hashes == 3  # pylint: disable=protected-access
  assert trax_env.tl.LSHSelfAttention()._n_hashes == 5  # pylint: disable=protected-access
  assert trax_env.ours.SelfAttention()._share_qk  # pylint: disable=protected-access
  with pytest.raises(KeyError, match='Ambiguous selector'):
    gin.parse_config('LSHSelfAttention.n_hashes = 2')
  with pytest.raises(ValueError, match="denylisted kwarg 'mode'"):
    gin.parse_config("lsh_jax.LSHSelfAttention.mode = 'eval'")
