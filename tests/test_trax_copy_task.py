"""The training job, its checkpoint and the lsh-jax command line.

One short run of the packaged config lab_lsh_layer.gin (a one-layer ReformerLM with the
lab's layer settings on 8-token copies) through `lsh-jax train`; expected
values: the loss goes down (the first and last printed evaluations), the
checkpoint loads into the same model built with Trax's own layer and both
give the same outputs (Trax is the reference), and the reverse.
"""
import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsh_jax.apps import cli
from lsh_jax.apps import commands
from trax_testing import trained_run, trax_env  # noqa: F401  (fixtures)

CONFIG = os.path.join(commands.CONFIG_DIR, 'lab_lsh_layer.gin')


def test_training_lowers_the_loss_and_prints_progress(trained_run):
  run_dir, lines = trained_run
  progress = [line for line in lines if line.startswith('step ')]
  assert [int(line.split('|')[0].split()[1]) for line in progress] == [
      1, 20, 40]
  for name in ('train loss', 'eval loss', 'eval accuracy', 'steps/s'):
    assert all(name in line for line in progress)
  eval_loss = [float(line.split('eval loss')[1].split('|')[0])
               for line in progress]
  assert eval_loss[-1] < eval_loss[0] - 0.3, eval_loss
  for name in ('model.pkl.gz', 'config.gin', 'train_log.txt'):
    assert os.path.isfile(os.path.join(run_dir, name))


def _trax_layer_config(tmp_path):
  """The lab config with Trax's own layer instead of lsh_jax's."""
  with open(CONFIG) as f:
    text = f.read().replace('lsh_jax.LSHSelfAttention',
                            'trax.layers.LSHSelfAttention')
  path = tmp_path / 'trax_layer.gin'
  path.write_text(text)
  return str(path)


def _eval_model(config, checkpoint, signature):
  from lsh_jax.apps import copy_task  # pylint: disable=import-outside-toplevel
  copy_task.parse_config(config)
  model = gin.query_parameter('train.model').scoped_configurable_fn(
      mode='eval')
  # Trax 1.4.1 cannot restore an uninitialised ReformerLM's (empty) state
  # inside init_from_file: initialise first, with either layer.
  model.init(signature)
  model.init_from_file(checkpoint, weights_only=False,
                       input_signature=signature)
  # Checkpoints hold NumPy arrays; Trax's own LSH fast path fails on NumPy
  # state under JAX 0.10 (a tracer-conversion error), ours does not.
  model.weights, model.state = jax.tree_util.tree_map(
      jnp.asarray, (model.weights, model.state))
  model.rng = jax.random.PRNGKey(0)
  return model


@pytest.mark.filterwarnings("ignore::FutureWarning")  # Trax gzip
def test_checkpoint_moves_between_the_two_layers(trax_env, trained_run,
                                                 tmp_path):
  from lsh_jax.apps import copy_task  # pylint: disable=import-outside-toplevel
  run_dir, _ = trained_run
  checkpoint = os.path.join(run_dir, 'model.pkl.gz')
  tokens, _ = copy_task.copy_batch(np.random.RandomState(0), 13, 8, 16)
  signature = trax_env.shapes.signature(jnp.asarray(tokens))
  trax_model = _eval_model(_trax_layer_config(tmp_path), checkpoint,
                           signature)
  trax_model.save_to_file(str(tmp_path / 'from_trax.pkl.gz'),
                          input_signature=signature)
  ours = _eval_model(CONFIG, str(tmp_path / 'from_trax.pkl.gz'), signature)
  ours_direct = _eval_model(CONFIG, checkpoint, signature)
  expected = trax_model(jnp.asarray(tokens))
  np.testing.assert_allclose(ours(jnp.asarray(tokens)), expected, rtol=0,
                             atol=1e-5)
  np.testing.assert_allclose(ours_direct(jnp.asarray(tokens)), expected,
                             rtol=0, atol=1e-5)


def test_evaluate_n_hashes_tabulates_accuracies(trained_run):
  from lsh_jax.apps import copy_task  # pylint: disable=import-outside-toplevel
  run_dir, _ = trained_run
  length, results = copy_task.evaluate_n_hashes(
      CONFIG, os.path.join(run_dir, 'model.pkl.gz'), (1, 2), batch_size=16,
      n_batches=1)
  assert length == 8
  assert list(results) == ['LSH, n_hashes=1', 'LSH, n_hashes=2',
                           'full attention (dense)']
  assert all(0.0 <= accuracy <= 1.0 for accuracy in results.values())
  # One chunk holds the whole sequence: every round sees every token, so
  # LSH attention is full attention (docs/algorithm.md), whatever n_hashes.
  assert len(set(round(a, 6) for a in results.values())) == 1


@pytest.mark.parametrize('argv,message', [
    (['train', 'no/such.gin'], 'config file not found: no/such.gin'),
    (['train', CONFIG, '-b', 'lsh_jax.LSHSelfAttention.n_hashez = 3'],
     "doesn't have a parameter named 'n_hashez'"),
    (['train', CONFIG, '-b', 'train.steps = = 3'], 'invalid config'),
    (['evaluate', CONFIG, 'no/model.pkl.gz'], 'file not found'),
])
def test_cli_errors_are_one_line(trax_env, capsys, argv, message):
  assert cli.main(argv) == 2
  captured = capsys.readouterr()
  assert captured.err.count('\n') == 1, captured.err
  assert captured.err.startswith(f'lsh-jax {argv[0]}: error: ')
  assert message in captured.err
  gin.clear_config()


def test_cli_rejects_bad_numbers(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(['train', CONFIG, '--steps', '0'])
  assert exit_info.value.code == 2
  assert 'expected an int >= 1, got 0' in capsys.readouterr().err
