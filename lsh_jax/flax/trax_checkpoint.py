"""Reads a Trax 1.4.1 checkpoint (`model.pkl.gz`) without Trax.

A Trax checkpoint is a gzipped pickle, and unpickling a file can run any
code it names. `read` unpickles only the one path it is given, and with an
allow-list: the NumPy and JAX array reconstructors, NumPy dtypes and
scalars, and Trax's `ShapeDtype` and `History` (replaced by inert records,
so Trax need not be installed). A file that names anything else is refused
with an `UnpicklingError` naming it, before that global is looked up. This
narrows what a file can do; it is no reason to load a file you do not
trust.

Two layouts, both of Trax 1.4.1:
  training.Loop (and `trainer_lib.train`, which runs one): the pickle holds
    the state and an int in 'flat_weights' (the gzip level); the weights
    are NumPy arrays in `<name>.weights.npy.gz` beside it (read with
    `np.load(allow_pickle=False)`: no code).
  the older `trainer_lib.Trainer`: the weights in the pickle itself.
"""
import gzip
import os
import pickle
from typing import Any, Dict

import numpy as np

__all__ = ['read']

# module -> names that a Trax checkpoint's pickle may name.
_NUMPY = {'_reconstruct', 'scalar', 'ndarray', 'dtype'}
_ALLOWED = {
    'numpy': {'ndarray', 'dtype'},
    'numpy.core.multiarray': _NUMPY,
    'numpy._core.multiarray': _NUMPY,
    'numpy.core.numeric': {'_frombuffer'},
    'numpy._core.numeric': {'_frombuffer'},
    'jax._src.array': {'_reconstruct_array'},
    'trax.shapes': {'ShapeDtype'},
    'trax.supervised.history': {'History'},
    'collections': {'OrderedDict'},
}


class _Record:
  """Stands in for Trax's ShapeDtype and History: keeps their fields."""

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __setstate__(self, state):
    self.__dict__.update(state if isinstance(state, dict) else {})


def _array_as_numpy(fun, args, arr_state, aval_state):
  """jax.Array's unpickler, returning the NumPy array (no device put)."""
  del aval_state
  value = fun(*args)  # `fun` came through the allow-list too
  value.__setstate__(arr_state)
  return value


class _AllowListUnpickler(pickle.Unpickler):

  def find_class(self, module, name):
    if name not in _ALLOWED.get(module, ()):
      raise pickle.UnpicklingError(
          f'refusing to load {module}.{name} from the checkpoint: a Trax '
          f'checkpoint holds arrays and Trax\'s ShapeDtype/History only, and '
          f'unpickling anything else could run code')
    if module == 'jax._src.array':
      return _array_as_numpy
    if module.startswith('trax.'):
      return _Record
    return super().find_class(module, name)


def _check_path(path):
  if not isinstance(path, (str, os.PathLike)):
    raise TypeError(f'path must be a str or os.PathLike, got '
                    f'{type(path).__name__}')
  path = os.fspath(path)
  if os.path.isdir(path):
    raise ValueError(f'path must be the checkpoint file (model.pkl.gz), got '
                     f'the folder {path!r}')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'checkpoint not found: {path!r}')
  return path


def _weights_file(path):
  """The `.weights.npy.gz` file training.Loop writes beside `path`."""
  candidates = ([path[:-len('pkl.gz')] + 'weights.npy.gz']
                if path.endswith('.pkl.gz') else []) + [path + '.npy']
  for candidate in candidates:
    if os.path.isfile(candidate):
      return candidate
  raise FileNotFoundError(
      f'the checkpoint {path!r} keeps its weights in a separate file (Trax\'s '
      f'training.Loop layout), not found: {" or ".join(map(repr, candidates))}')


def _load_arrays(path, compresslevel):
  """Trax's `np_from_file`: arrays saved one after another, no pickle."""
  del compresslevel  # gzip reads any level
  arrays = []
  with gzip.open(path, 'rb') as f:
    while True:
      try:
        arrays.append(np.load(f, allow_pickle=False))
      except EOFError:
        return arrays
      except ValueError as error:
        if 'allow_pickle' in str(error):
          raise pickle.UnpicklingError(
              f'{path!r} holds a pickled object where Trax writes plain '
              f'arrays; not loaded') from None
        # np.load at the end of the stream: no more arrays.
        return arrays


def read(path: 'str | os.PathLike') -> Dict[str, Any]:
  """The weights and state of a Trax checkpoint file.

  Only `path` is unpickled (with the module docstring's allow-list), plus
  the NumPy weights file beside it in training.Loop's layout.

  Args:
    path: the checkpoint file, `model.pkl.gz` of a Trax run folder.

  Returns:
    dict with `flat_weights` (list of NumPy arrays, Trax's flattening order
    of the model's weights), `flat_state` (list, likewise) and `step`.

  Raises:
    FileNotFoundError, ValueError (a folder), pickle.UnpicklingError (a
    global outside the allow-list, or not a Trax checkpoint).
  """
  path = _check_path(path)
  try:
    with gzip.open(path, 'rb') as f:
      data = _AllowListUnpickler(f).load()
  except (OSError, EOFError) as error:
    raise pickle.UnpicklingError(
        f'{path!r} is not a gzipped pickle (Trax\'s model.pkl.gz): '
        f'{error}') from None
  if not isinstance(data, dict) or 'flat_weights' not in data:
    raise pickle.UnpicklingError(
        f'{path!r} is not a Trax checkpoint: expected a dict with '
        f'"flat_weights", got {type(data).__name__}')
  flat_weights = data['flat_weights']
  if isinstance(flat_weights, int):  # training.Loop: a separate file
    flat_weights = _load_arrays(_weights_file(path), flat_weights)
  return dict(flat_weights=[np.asarray(w) for w in flat_weights],
              flat_state=list(data.get('flat_state') or []),
              step=data.get('step'))

