"""The optional extras, and the one-line message a missing one gives.

`lsh_jax.trax`, `lsh_jax.flax` and `lsh_jax.equinox` call `require` before
importing their framework, and every `lsh-jax` command that needs an extra
checks it (`lsh_jax.apps.commands.require_extras`) before doing any work:
a missing extra is one line naming it and the install command, not a
traceback from deep inside an import. Looks modules up without importing
them (`importlib.util.find_spec`), so `import lsh_jax` stays light.
"""
import importlib.util

__all__ = ['MODULES', 'missing', 'message', 'require']

# extra -> the top-level modules lsh_jax imports from it (setup.cfg's
# [options.extras_require] installs them).
MODULES = {
    'trax': ('trax', 'gin', 'optax'),  # optax: table2's training loop
    'flax': ('flax', 'optax'),
    'equinox': ('equinox',),
    'plots': ('matplotlib',),
}


def missing(extra: str) -> list[str]:
  """The modules of `extra` that are not installed."""
  return [name for name in MODULES[extra]
          if importlib.util.find_spec(name) is None]


def message(*extras: str) -> str | None:
  """'needs the X extra (not installed: ...): pip install ...', or None.

  None when every module of `extras` is installed; otherwise one line that
  names the missing extras, their missing modules and the command that
  installs them all.
  """
  absent = {extra: missing(extra) for extra in extras}
  absent = {extra: names for extra, names in absent.items() if names}
  if not absent:
    return None
  noun = 'extra' if len(absent) == 1 else 'extras'
  modules = ', '.join(name for names in absent.values() for name in names)
  return (f'needs the {" and ".join(absent)} {noun} (not installed: '
          f"{modules}): pip install 'lsh_jax[{','.join(absent)}]'")


def require(extra: str, package: str) -> None:
  """Raises ImportError '`package` needs the `extra` extra ...' if missing."""
  text = message(extra)
  if text:
    raise ImportError(f'{package} {text}')
