"""The package's public surface: every name in `__all__` resolves, the
re-exports are the functions their modules define, and the CLI dispatches."""
import pytest

import lsh_jax
from lsh_jax.apps import cli
from lsh_jax.core import weights


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


def test_moved_building_blocks_still_resolve_with_a_warning():
  from lsh_jax import core  # pylint: disable=import-outside-toplevel
  with pytest.warns(DeprecationWarning, match='lsh_jax.core.sort_buckets'):
    moved = lsh_jax.sort_buckets
  assert moved is core.sort_buckets


def test_unknown_attribute_is_an_attribute_error():
  with pytest.raises(AttributeError, match='no_such_name'):
    lsh_jax.no_such_name  # pylint: disable=pointless-statement


def test_oracle_alias_exposes_the_three_reference_modules():
  from lsh_jax import oracle  # pylint: disable=import-outside-toplevel
  from lsh_jax.reference import decode, lab, spec  # pylint: disable=import-outside-toplevel
  assert oracle.lsh_self_attention is spec.lsh_self_attention
  assert oracle.dotandv is lab.dotandv
  assert oracle.predict_step is decode.predict_step
