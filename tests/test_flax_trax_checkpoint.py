"""lsh_jax.flax.trax_checkpoint: a Trax checkpoint read without Trax.

Checkpoints are written here in Trax 1.4.1's training.Loop layout by hand
(a gzipped pickle dict, the weights as np.save'd arrays beside it), so the
expected weights are the arrays written. A pickle naming anything outside
the allow-list is refused before that name is looked up.
"""
import gzip
import os
import pickle

import numpy as np
import pytest

from lsh_jax.flax import trax_checkpoint

WEIGHTS = [np.arange(6, dtype=np.float32).reshape(2, 3),
           np.ones(4, np.float32)]


def _write(folder, payload, weights=WEIGHTS):
  path = os.path.join(folder, 'model.pkl.gz')
  with gzip.open(path, 'wb') as f:
    pickle.dump(payload, f)
  if weights is not None:
    with gzip.open(os.path.join(folder, 'model.weights.npy.gz'), 'wb') as f:
      for w in weights:
        np.save(f, w, allow_pickle=False)
  return path


def test_reads_the_loop_layout(tmp_path):
  state = [np.zeros((4, 2), np.uint32), np.float32(0.1)]
  path = _write(str(tmp_path), {'step': 3, 'flat_weights': 2,
                                'flat_state': state})
  got = trax_checkpoint.read(path)
  assert got['step'] == 3 and len(got['flat_weights']) == 2
  for a, b in zip(got['flat_weights'], WEIGHTS):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(got['flat_state'][0], state[0])


class _RunsCode:
  def __reduce__(self):
    return (os.system, ('echo should-not-run',))


def test_a_pickle_naming_other_code_is_refused(tmp_path):
  path = _write(str(tmp_path), {'flat_weights': [_RunsCode()]})
  with pytest.raises(pickle.UnpicklingError, match=r'refusing to load '
                     r'(posix|nt|os)\.system from the checkpoint'):
    trax_checkpoint.read(path)


def test_bad_paths_give_clear_errors(tmp_path):
  with pytest.raises(ValueError, match=r'must be the checkpoint file'):
    trax_checkpoint.read(tmp_path)
  with pytest.raises(FileNotFoundError, match=r'checkpoint not found'):
    trax_checkpoint.read(tmp_path / 'missing.pkl.gz')
  path = _write(str(tmp_path), {'flat_weights': 2}, weights=None)
  with pytest.raises(FileNotFoundError, match=r'keeps its weights in a '
                     r'separate file'):
    trax_checkpoint.read(path)
  plain = tmp_path / 'plain.pkl.gz'
  plain.write_bytes(b'not gzip')
  with pytest.raises(pickle.UnpicklingError, match=r'not a gzipped pickle'):
    trax_checkpoint.read(plain)
