"""The Flax copy-task model (lsh_jax.apps.flax_copy), tiny and short.

Checks that training the ReformerLM lowers the loss (no reference value: the
initial loss is measured in the same run), that the checkpoint (npz + json,
no pickles) restores exactly, that the evaluation table has every setting
with accuracies in [0, 1], and that greedy sampling from the checkpoint
agrees with the model's own one-pass predictions where they must agree.
"""
import io

import jax
import numpy as np
import pytest
from flax import nnx

from lsh_jax.apps import flax_copy

TINY = flax_copy.CopyConfig(vocab_size=7, length=16, d_model=16, d_ff=32,
                            n_heads=2, d_head=8, n_layers=1, chunk_len=4,
                            batch_size=8, learning_rate=1e-2, warmup_steps=1)


def test_copy_batches_repeat_the_first_half():
  tokens, weights = flax_copy.copy_batch(np.random.RandomState(0), 7, 16, 3)
  assert tokens.shape == weights.shape == (3, 16)
  np.testing.assert_array_equal(tokens[:, :8], tokens[:, 8:])
  assert np.all(tokens[:, 0] == 0) and np.all(tokens[:, 1:8] >= 1)
  assert np.all(tokens[:, 1:8] <= 5)  # symbols 1..vocab_size - 2
  np.testing.assert_array_equal(weights[0], [0] * 9 + [1] * 7)


def test_training_lowers_the_loss_and_parameters_round_trip(tmp_path):
  out = io.StringIO()
  model, losses = flax_copy.train(TINY, steps=30, log_every=30, out=out)
  assert len(losses) == 30 and np.all(np.isfinite(losses))
  # The initial loss is about log(vocab) ~ 1.9; 30 steps at lr 1e-2 learn
  # the symbol distribution of the copied half at least.
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1, losses
  assert 'step    30' in out.getvalue()

  flax_copy.save(model, TINY, tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['config.json',
                                                        'params.npz']
  restored, config = flax_copy.restore(tmp_path)
  assert config == TINY
  for got, expected in zip(jax.tree.leaves(nnx.state(restored, nnx.Param)),
                           jax.tree.leaves(nnx.state(model, nnx.Param))):
    np.testing.assert_array_equal(got, expected)

  results = flax_copy.evaluate(restored, TINY, (1, 2), n_batches=1)
  assert list(results) == ['LSH, n_hashes=1', 'LSH, n_hashes=2',
                           'full attention (dense)']
  assert all(0.0 <= a <= 1.0 for a in results.values())
  # The dense twin on restored parameters equals the dense twin on the
  # trained ones: restore loses nothing.
  assert results == flax_copy.evaluate(model, TINY, (1, 2), n_batches=1)

  # Greedy decoding with the caches (`generate`): its first token is the
  # model's one-pass argmax at the first decoded position (the same
  # prefix; dense attention decodes exactly what the full model computes).
  result = flax_copy.sample(tmp_path, n_examples=3, seed=5, n_hashes=None)
  prefix_len = TINY.length // 2 + 1
  assert result['prefix_len'] == prefix_len
  assert result['samples'].shape == (3, TINY.length - prefix_len)
  dense, _ = flax_copy.restore(tmp_path, n_hashes=None)
  dense.eval()
  first = np.argmax(dense(jax.numpy.asarray(result['tokens']))[:,
                                                               prefix_len],
                    axis=-1)
  np.testing.assert_array_equal(result['samples'][:, 0], first)
  assert result['accuracy'] == np.mean(
      result['samples'] == result['tokens'][:, prefix_len:])


def test_restore_reads_no_pickle(tmp_path):
  with pytest.raises(FileNotFoundError, match='has no params.npz'):
    flax_copy.restore(tmp_path)
  model = flax_copy.copy_model(TINY, rngs=nnx.Rngs(0))
  flax_copy.save(model, TINY, tmp_path)
  arrays = dict(np.load(tmp_path / 'params.npz'))
  arrays['embed/embedding'] = np.array([object()], dtype=object)
  np.savez(tmp_path / 'params.npz', **arrays)  # an object array: a pickle
  with pytest.raises(ValueError, match='allow_pickle'):
    flax_copy.restore(tmp_path)


def test_demo_command_has_the_flax_framework():
  from lsh_jax.apps import cli  # pylint: disable=import-outside-toplevel
  args = cli.build_parser().parse_args(['demo', '--framework', 'flax',
                                        '--steps', '5'])
  assert args.framework == 'flax' and args.steps == 5
  assert cli.build_parser().parse_args(['demo']).framework == 'trax'
  args = cli.build_parser().parse_args(['sample', 'runs/x', '--framework',
                                        'flax'])
  assert args.framework == 'flax'
