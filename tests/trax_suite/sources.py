"""Trax 1.4.1's test files, from its source distribution on PyPI.

The Trax wheel ships no tests; the sdist `trax-1.4.1.tar.gz` does. We never
copy them into this repository: `test_files()` finds them in a cache
directory, downloading the sdist with pip (`pip download trax==1.4.1
--no-binary :all: --no-deps`, PyPI only) the first time.

  LSH_TRAX_SDIST      path of trax-1.4.1.tar.gz or of its extracted
                      directory (no download)
  LSH_TRAX_CACHE      cache directory (default ~/.cache/lsh_jax/trax-1.4.1)
"""
import os
import subprocess
import sys
import tarfile

VERSION = '1.4.1'
# The test modules the suite runs (paths inside the sdist's trax/ package).
FILES = (
    'layers/research/efficient_attention_test.py',
    'models/reformer/reformer_test.py',
    'models/research/terraformer_test.py',
    'supervised/trainer_lib_test.py',
    'supervised/decoding_test.py',
)


def _cache_dir():
  return os.environ.get('LSH_TRAX_CACHE') or os.path.join(
      os.path.expanduser('~'), '.cache', 'lsh_jax', f'trax-{VERSION}')


def _sdist():
  """Path of the sdist tarball or extracted tree; downloads it if needed."""
  given = os.environ.get('LSH_TRAX_SDIST')
  if given:
    if not os.path.exists(given):
      raise FileNotFoundError(f'LSH_TRAX_SDIST={given} does not exist')
    return given
  cache = _cache_dir()
  tarball = os.path.join(cache, f'trax-{VERSION}.tar.gz')
  if not os.path.exists(tarball):
    os.makedirs(cache, exist_ok=True)
    subprocess.run(
        [sys.executable, '-m', 'pip', 'download', f'trax=={VERSION}',
         '--no-binary', ':all:', '--no-deps', '--no-build-isolation', '-q',
         '-d', cache], check=True, timeout=600)
  return tarball


def test_files():
  """{module name: path} of the FILES, extracted flat into the cache."""
  source = _sdist()
  out_dir = os.path.join(_cache_dir(), 'tests')
  os.makedirs(out_dir, exist_ok=True)
  paths = {}
  members = {f'trax-{VERSION}/trax/{name}': name for name in FILES}
  if os.path.isdir(source):
    root = source
    if os.path.isdir(os.path.join(source, f'trax-{VERSION}')):
      root = os.path.join(source, f'trax-{VERSION}')
    for name in FILES:
      with open(os.path.join(root, 'trax', name)) as f:
        text = f.read()
      paths[name] = _write(out_dir, name, text)
    return paths
  with tarfile.open(source) as tar:
    for member, name in members.items():
      text = tar.extractfile(member).read().decode('utf-8')
      paths[name] = _write(out_dir, name, text)
  return paths


def _write(out_dir, name, text):
  path = os.path.join(out_dir, os.path.basename(name))
  if not os.path.exists(path) or open(path).read() != text:
    with open(path, 'w') as f:
      f.write(text)
  return path
