"""The package's public surface: every name in `__all__` resolves, the
re-exports are the functions their modules define, and the CLI dispatches."""
import pytest

import lsh_jax
from lsh_jax import cli
from lsh_jax import weights


def test_all_names_resolve():
  missing = [name for name in lsh_jax.__all__ if not hasattr(lsh_jax, name)]
  assert missing == []


def test_attention_weights_is_reexported():
  assert lsh_jax.attention_weights is weights.attention_weights


def test_bench_hands_its_options_to_the_benchmark_driver(capfd):
  assert cli.main(['bench', '--help-run']) == 0
  assert '--lengths' in capfd.readouterr().out


def test_other_commands_reject_unknown_options(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(['explain', '--no-such-option'])
  assert exit_info.value.code == 2
  assert 'unrecognized arguments: --no-such-option' in capsys.readouterr().err
