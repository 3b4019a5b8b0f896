"""Decoding: lsh_jax.trax.LSHSelfAttention(mode='predict').

Expected values, per test:
  * Trax 1.4.1's own decoding (`_use_predict_mem` and
    `_incremental_forward_unbatched`, its batched path, jitted), run through
    `trax_testing.old_jax_shim` for the two JAX calls it needs that JAX
    removed: same weights, state and inputs, every step's output within
    1e-5 and the whole state (memory, buckets, indices, keys) identical.
  * The float64 NumPy oracle (`lsh_jax.oracle.predict_prefix` /
    `predict_step`), per example and head with the rotations drawn from the
    state's hash key, summed over heads: within 1e-5, except prefix queries
    that saw only themselves in every round of some head (causal position
    0, and tokens whose buckets hold no earlier token): docs/algorithm.md §5's
    float32 caveat, 1e-2.
  * Greedy sampling: the same model decoded without predict mode, by full
    recomputation in eval mode after every token (with the memory holding
    the whole sequence and one chunk spanning it, both are exact causal
    attention, so the argmax tokens must agree).

Measured (float32, CPU): outputs within 3.0e-7 of Trax's and 3.9e-7 of
the oracle's (queries that saw only themselves: 5.4e-3); states
bit-identical. The greedy samples of the 40-step lab model equal those of
full recomputation; 29% of its copied tokens are right (chance: 9%).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from helpers import assert_close_to_oracle
from trax_testing import decode
from trax_testing import trained_run  # noqa: F401  (fixture)
from trax_testing import trax_decoding  # noqa: F401  (fixture)
from trax_testing import trax_env  # noqa: F401  (fixture)

OUT_ATOL = helpers.DECODE_ATOL

# name: (layer kwargs, (batch, total length, d_model), prefix length)
CASES = {
    # A short prefix (<= predict_drop_len) fills part of the memory; 35
    # steps roll the memory over four times. Heads one at a time (Trax's
    # default n_parallel_heads=1: blocks in a fori_loop).
    'short_prefix_rolls_over': (dict(
        n_heads=2, d_qk=4, d_v=5, chunk_len=4, n_chunks_before=1,
        n_hashes=2, n_buckets=4, predict_mem_len=16, predict_drop_len=8),
                                (2, 40, 6), 5),
    # A long prefix (> predict_mem_len, not a multiple of chunk_len):
    # processed in one call, the memory keeps its last 20 tokens; factorised
    # buckets, three rounds, all pairs vmapped at once.
    'long_prefix_factorised': (dict(
        n_heads=3, d_qk=6, d_v=3, chunk_len=4, n_chunks_before=2,
        n_hashes=3, n_buckets=[2, 4], predict_mem_len=20, predict_drop_len=6,
        n_parallel_heads=None), (1, 36, 7), 26),
}


def make_layer(env, module, kwargs, d_model, batch, seed=1):
  layer = module.LSHSelfAttention(**dict(kwargs, causal=True, mode='predict'))
  layer.init(env.shapes.ShapeDtype((batch, 1, d_model), jnp.float32),
             rng=env.fastmath.random.get_prng(seed))
  return layer


def oracle_decode(layer, kwargs, x, prefix_len):
  """`helpers.oracle_decode` with the layer's weights and hash keys."""
  return helpers.oracle_decode(
      layer.weights, layer.state[2][2], x, prefix_len,
      mem_len=kwargs['predict_mem_len'], drop_len=kwargs['predict_drop_len'],
      **{name: kwargs[name] for name in ('n_buckets', 'n_hashes', 'chunk_len',
                                         'n_chunks_before')})


@pytest.mark.parametrize('case', list(CASES))
def test_every_step_matches_trax_and_the_oracle(trax_env, trax_decoding,
                                                case):
  kwargs, (batch, length, d_model), prefix_len = CASES[case]
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0),
                                   (batch, length, d_model)))
  theirs = make_layer(trax_env, trax_decoding, kwargs, d_model, batch)
  ours = make_layer(trax_env, trax_env.ours, kwargs, d_model, batch)
  # Same weights and initial state: Trax's own init, in predict layout.
  jax.tree_util.tree_map(np.testing.assert_array_equal, ours.weights,
                         theirs.weights)
  jax.tree_util.tree_map(np.testing.assert_array_equal, ours.state,
                         theirs.state)
  expected_outs, expected_states = decode(theirs, jnp.asarray(x), prefix_len)
  outs, states = decode(ours, x, prefix_len)  # NumPy inputs work too
  for out, expected, state, expected_state in zip(
      outs, expected_outs, states, expected_states):
    np.testing.assert_allclose(out, expected, rtol=0, atol=OUT_ATOL)
    jax.tree_util.tree_map(np.testing.assert_array_equal, state,
                           expected_state)
  got = np.concatenate(outs, axis=1)
  print(f'{case}: max |ours - Trax| = '
        f'{np.max(np.abs(got - np.concatenate(expected_outs, 1))):.2e}')
  error, only_self_error = assert_close_to_oracle(
      got, oracle_decode(ours, kwargs, x, prefix_len))
  print(f'{case}: max |ours - oracle| = {error:.2e} (queries that saw only '
        f'themselves: {only_self_error:.2e})')
  mem_end, (mem,), (buckets, buckets_idx, _) = states[-1]
  mem_len = kwargs['predict_mem_len']
  assert mem.shape == (batch, mem_len, d_model)
  assert buckets.shape == (batch * kwargs['n_heads'],
                           kwargs['n_hashes'] * mem_len)
  # The memory ends with the last token; rolls dropped the oldest ones.
  np.testing.assert_array_equal(np.asarray(mem)[:, int(mem_end) - 1],
                                x[:, -1])
  np.testing.assert_array_equal(np.asarray(buckets_idx), int(mem_end))


def test_n_hashes_can_differ_from_training(trax_env):
  """Weights trained with 2 rounds decode with 4: the state has 4 rounds."""
  kwargs, (batch, length, d_model), prefix_len = CASES[
      'short_prefix_rolls_over']
  trained = trax_env.ours.LSHSelfAttention(**dict(
      kwargs, causal=True, mode='train', n_hashes=2))
  trained.init(trax_env.shapes.ShapeDtype((batch, 32, d_model)),
               rng=trax_env.fastmath.random.get_prng(3))
  kwargs = dict(kwargs, n_hashes=4)
  layer = make_layer(trax_env, trax_env.ours, kwargs, d_model, batch)
  layer.weights = trained.weights
  assert layer.state[2][0].shape == (batch * kwargs['n_heads'],
                                     4 * kwargs['predict_mem_len'])
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(2),
                                   (batch, 20, d_model)))
  outs, _ = decode(layer, x, prefix_len)
  assert_close_to_oracle(np.concatenate(outs, axis=1),
                         oracle_decode(layer, kwargs, x, prefix_len))


def test_a_long_prefix_after_the_start_gives_nan(trax_env):
  """Trax's error signal: a long prefix only works at the start."""
  kwargs, (batch, _, d_model), _ = CASES['short_prefix_rolls_over']
  layer = make_layer(trax_env, trax_env.ours, kwargs, d_model, batch)
  x = jnp.ones((batch, 12, d_model))
  layer(x[:, :1])
  assert np.all(np.isnan(np.asarray(layer(x))))  # 12 > predict_drop_len


@pytest.mark.parametrize('kwargs,message', [
    (dict(causal=False), 'needs causal=True'),
    (dict(masked=True), 'needs masked=False'),
    (dict(n_chunks_after=1), 'needs n_chunks_after=0'),
    (dict(predict_mem_len=8, predict_drop_len=9),
     'predict_drop_len must be <= predict_mem_len=8, got 9'),
    (dict(predict_mem_len=-1), 'predict_mem_len must be >= 1, got -1'),
])
def test_predict_arguments_are_checked(trax_env, kwargs, message):
  with pytest.raises(ValueError, match=message):
    trax_env.ours.LSHSelfAttention(**dict(
        dict(causal=True, chunk_len=4, mode='predict'), **kwargs))


def test_predict_has_no_backward_pass(trax_env):
  kwargs, (batch, _, d_model), _ = CASES['short_prefix_rolls_over']
  layer = make_layer(trax_env, trax_env.ours, kwargs, d_model, batch)
  x = jnp.ones((batch, 1, d_model))
  with pytest.raises(ValueError, match="mode='predict' has no backward"):
    layer.backward(x, None, x, layer.weights, layer.state, layer.state)


def _eval_greedy(config, checkpoint, tokens, prefix_len):
  """Greedy decoding by full recomputation: the eval model on the whole
  sequence so far after every token (the model shifts it right itself)."""
  import gin  # pylint: disable=import-outside-toplevel
  from trax import shapes  # pylint: disable=import-outside-toplevel

  from lsh_jax.apps import copy_task  # pylint: disable=import-outside-toplevel
  copy_task.parse_config(config)
  model = gin.query_parameter('train.model').scoped_configurable_fn(
      mode='eval')
  model.init_from_file(checkpoint, weights_only=True,
                       input_signature=shapes.signature(tokens))
  model.rng = jax.random.PRNGKey(0)
  sequence = np.zeros_like(tokens)
  sequence[:, :prefix_len] = tokens[:, :prefix_len]
  for t in range(prefix_len, tokens.shape[1]):
    # Position t is predicted from the tokens before it (the model shifts
    # right); zeros after them are invisible to it (causal).
    logits = np.asarray(model(jnp.asarray(sequence)))
    sequence[:, t] = np.argmax(logits[:, t], axis=-1)
  return sequence[:, prefix_len:]


@pytest.mark.filterwarnings('ignore::FutureWarning')  # Trax's gzip
def test_greedy_sampling_of_the_trained_copy_model(trained_run, capsys):
  """`lsh-jax sample` on the trained lab model; the samples are those of
  greedy decoding by full recomputation (module docstring)."""
  import os  # pylint: disable=import-outside-toplevel

  from lsh_jax.apps import cli  # pylint: disable=import-outside-toplevel
  run_dir, _ = trained_run
  assert cli.main(['sample', run_dir, '--examples', '16', '--show',
                   '16']) == 0
  lines = capsys.readouterr().out.splitlines()
  rows = {name: np.array([[int(v) for v in line.split()[1:]] for line in lines
                          if line.startswith(name + ' ')])
          for name in ('prefix', 'expected', 'sampled')}
  assert rows['sampled'].shape == rows['expected'].shape == (16, 3)
  accuracy = float(np.mean(rows['sampled'] == rows['expected']))
  assert f'greedy copy accuracy {accuracy:.2%}' in lines[-1]
  tokens = np.concatenate([rows['prefix'], rows['expected']], axis=1)
  expected = _eval_greedy(os.path.join(run_dir, 'config.gin'),
                          os.path.join(run_dir, 'model.pkl.gz'), tokens,
                          rows['prefix'].shape[1])
  np.testing.assert_array_equal(rows['sampled'], expected)
  print(f'greedy copy accuracy of the 40-step lab model: {accuracy:.2%}')
  # 40 steps on 3-token copies: 29% measured, over twice chance (1 in 11).
  # (The main job's model, trained ~500 steps, samples 100%: docs/decoding.md.)
  assert accuracy > 2 / 11, accuracy


def test_sample_errors_are_one_line(trax_env, tmp_path, capsys):
  from lsh_jax.apps import cli  # pylint: disable=import-outside-toplevel
  assert cli.main(['sample', str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1
  assert err.startswith('lsh-jax sample: error: file not found: ')
