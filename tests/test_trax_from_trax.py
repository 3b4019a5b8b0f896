"""lsh_jax.flax.from_trax: a Trax ReformerLM as the Flax ReformerLM.

Expected values come from Trax 1.4.1: the Trax model's logits on the same
tokens (eval mode, built with lsh_jax's Trax layers, whose LSH state keys
the Flax model takes with `trax_hash_keys=True`), and one step of Trax's own
`training.Loop` with Trax's Adam, against one optax step of the Flax model
from the same weights. Sizes are small and differ from each other (V=13,
Dm=16, Dff=24, N=2, H=8, Hv=4, T=32).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_testing import trax_env  # noqa: F401  (fixture)

nnx = pytest.importorskip('flax.nnx')
optax = pytest.importorskip('optax')
from lsh_jax.flax import from_trax  # noqa: E402  pylint: disable=g-import-not-at-top
from lsh_jax.flax import LocalSelfAttention  # noqa: E402  pylint: disable=g-import-not-at-top
from lsh_jax.flax import LSHSelfAttention  # noqa: E402  pylint: disable=g-import-not-at-top

V, DM, DFF, N, H, HV, B, T = 13, 16, 24, 2, 8, 4, 2, 32
TOKENS = np.asarray(jax.random.randint(jax.random.PRNGKey(0), (B, T), 1, V),
                    np.int32)


def _attention(env, kind):
  if kind == 'lsh':
    return functools.partial(env.ours.LSHSelfAttention, chunk_len=8,
                             n_hashes=2, n_buckets=4, n_chunks_before=1)
  if kind == 'local':
    return functools.partial(env.ours.SelfAttention, chunk_len=8,
                             n_chunks_before=1)
  return env.ours.SelfAttention  # dense


def _reformer(env, kinds, mode='eval', **kwargs):
  """A Trax ReformerLM, one layer per entry of `kinds`, initialised."""
  config = dict(vocab_size=V, d_model=DM, d_ff=DFF, d_attention_key=H,
                d_attention_value=HV, n_layers=len(kinds), n_heads=N,
                dropout=0.0, max_len=64, mode=mode,
                attention_type=[_attention(env, k) for k in kinds])
  config.update(kwargs)
  model = env.models.ReformerLM(**config)
  model.init(env.shapes.signature(TOKENS), rng=jax.random.PRNGKey(3))
  return model


def _cross_entropy(logits):
  """Trax's WeightedCategoryCrossEntropy with unit weights."""
  log_p = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(log_p, jnp.asarray(TOKENS)[..., None],
                                       -1))


def _trax_logits(model):
  """The model's logits without changing its state (its next call's)."""
  logits, _ = model.pure_fn(TOKENS, model.weights, model.state,
                            jax.random.PRNGKey(0))
  return np.asarray(logits)


@pytest.mark.parametrize('kinds,options', [
    (['lsh', 'local', 'dense'], {}),
    (['lsh'], dict(pos_type='axial', pos_axial_shape=(4, 8),
                   pos_d_axial_embs=(6, 10), ff_chunk_size=8)),
    (['local', 'local'], dict(pos_type='sin-cos')),
])
def test_logits_equal_trax_in_eval_mode(trax_env, kinds, options):
  """LSH, local (chunked) and dense layers; learned, axial and sin-cos
  positions; chunked feed-forward. Measured: <= 1.7e-6 (logits up to ~4)."""
  if options.get('pos_type') == 'sin-cos':
    options = dict(options, ff_activation=trax_env.tl.Relu)
  model = _reformer(trax_env, kinds, **options)
  expected = _trax_logits(model)
  flax_model = from_trax(model, trax_hash_keys=True)
  got = flax_model(jnp.asarray(TOKENS), deterministic=True)
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
  if 'lsh' in kinds:  # the hash keys matter: Flax's own keys hash otherwise
    own = from_trax(model)(jnp.asarray(TOKENS), deterministic=True)
    assert float(jnp.max(jnp.abs(own - expected))) > 1e-3


def _trax_adam_in_optax(learning_rate):
  """trax.optimizers.Adam(learning_rate) (weight decay 1e-5 of the weight,
  eps 1e-5 outside the root) as an optax transformation."""
  return optax.chain(optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-5),
                     optax.scale(-learning_rate),
                     optax.add_decayed_weights(-1e-5))


def test_one_training_step_equals_trax_and_its_checkpoint_loads(
    trax_env, tmp_path):
  """One step of Trax's training.Loop (Trax's Adam) and one optax step of
  the Flax model from the same weights, same tokens, dropout 0: the step's
  loss and the loss after it agree (measured: 2.4e-7 and 1.2e-6), and so do
  the weights (2.5e-6; Adam divides by the gradient's size, so a rounding
  difference in a tiny gradient moves its weight by up to ~lr x 1e-4).
  The checkpoint the Loop writes loads to the same weights by path.

  Trax's Loop counts steps from 1 and passes that count to its optimizer,
  so Trax's Adam bias-corrects its first update as optax does its second:
  the optax state's count starts at 1 here."""
  import trax  # pylint: disable=import-outside-toplevel
  from trax.supervised import training  # pylint: disable=import-outside-toplevel
  model = _reformer(trax_env, ['lsh', 'local', 'dense'], mode='train')
  learning_rate = 1e-2

  def batches():
    while True:
      yield TOKENS, TOKENS, np.ones_like(TOKENS, np.float32)

  task = training.TrainTask(
      labeled_data=batches(), loss_layer=trax_env.tl.WeightedCategoryCrossEntropy(),
      optimizer=trax.optimizers.Adam(learning_rate), n_steps_per_checkpoint=1)
  loop = training.Loop(model, [task], output_dir=str(tmp_path), random_seed=0)
  flax_model = from_trax(model, trax_hash_keys=True)  # the Loop's init
  trax_before = float(_cross_entropy(_trax_logits(model)))
  loop.run(1)
  trax_after = float(_cross_entropy(_trax_logits(model)))
  trained = from_trax(model, trax_hash_keys=True)  # Trax's new weights

  tx = _trax_adam_in_optax(learning_rate)
  params = nnx.state(flax_model, nnx.Param)
  opt_state = optax.tree_utils.tree_set(tx.init(params),
                                        count=jnp.asarray(1, jnp.int32))
  loss_fn = lambda m: _cross_entropy(m(jnp.asarray(TOKENS),
                                       deterministic=True))
  flax_before, grads = nnx.value_and_grad(loss_fn)(flax_model)
  updates, _ = tx.update(grads, opt_state, params)
  nnx.update(flax_model, optax.apply_updates(params, updates))
  # Trax's state moved on a step: hash with the keys its next call uses.
  for block, trained_block in zip(flax_model.blocks, trained.blocks):
    if isinstance(block.attention, LSHSelfAttention):
      block.attention.hash_key.set_value(
          trained_block.attention.hash_key.get_value())
  flax_after = float(loss_fn(flax_model))

  np.testing.assert_allclose(flax_before, trax_before, rtol=0, atol=1e-5)
  np.testing.assert_allclose(flax_after, trax_after, rtol=0, atol=1e-5)
  assert trax_after < trax_before - 0.1  # the step did something
  trained_params = nnx.state(trained, nnx.Param)
  for got, want in zip(jax.tree.leaves(nnx.state(flax_model, nnx.Param)),
                       jax.tree.leaves(trained_params)):
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)

  # The checkpoint: the configuration as a user writes it for Flax.
  attention_type = [
      functools.partial(LSHSelfAttention, chunk_len=8, n_hashes=2,
                        n_buckets=4, n_chunks_before=1),
      functools.partial(LocalSelfAttention, chunk_len=8, n_chunks_before=1),
      LocalSelfAttention]
  loaded = from_trax(str(tmp_path / 'model.pkl.gz'), vocab_size=V,
                     d_model=DM, d_ff=DFF, d_attention_key=H,
                     d_attention_value=HV, n_layers=3, n_heads=N,
                     dropout=0.0, max_len=64, attention_type=attention_type)
  for got, want in zip(jax.tree.leaves(nnx.state(loaded, nnx.Param)),
                       jax.tree.leaves(trained_params)):
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('options,match', [
    (dict(ff_use_sru=1), r'ff_use_sru'),
    (dict(ff_sparsity=4), r'ff_sparsity'),
    (dict(loss_sparsity=4, loss_sparsity_type='lowrank', loss_d_lowrank=4),
     r'loss_sparsity'),
    (dict(pos_type='fixed-base'), r'FixedBasePositionalEncoding'),
    (dict(pos_start_from_zero_prob=0.5), r'pos_start_from_zero_prob'),
])
def test_trax_options_without_a_flax_equivalent_are_refused(trax_env, options,
                                                            match):
  model = _reformer(trax_env, ['local'], **options)
  with pytest.raises(ValueError, match=match):
    from_trax(model)


def test_other_attention_and_bad_inputs_are_refused(trax_env, tmp_path):
  model = _reformer(trax_env, ['local'])
  causal = _reformer(trax_env, ['local'],
                     attention_type=trax_env.tl.CausalAttention)
  with pytest.raises(ValueError, match=r'attention_type of layer 0 is '
                     r'\[.*DotProductCausalAttention.*\].*supported: '
                     r'LSHSelfAttention and SelfAttention'):
    from_trax(causal)
  with pytest.raises(TypeError, match=r'model_or_path must be a Trax '
                     r'ReformerLM .* or the path of a Trax checkpoint'):
    from_trax({'weights': 1})
  with pytest.raises(ValueError, match=r'configuration as ReformerLM keyword '
                     r'arguments .* missing: attention_type'):
    from_trax(tmp_path / 'model.pkl.gz', vocab_size=V)
  with pytest.raises(ValueError, match=r'Trax weight 4 \(layer 0 attention '
                     r'w_q\) has shape \(2, 16, 8\), which does not fit the '
                     r'Flax parameter of shape \(16, 2, 4\)'):
    from_trax(model, d_attention_key=4)
  with pytest.raises(ValueError, match=r'the Trax model has 18 weight arrays, '
                     r'a ReformerLM with this configuration has 30'):
    from_trax(model, n_layers=2)
  with pytest.raises(ValueError, match=r'trax_hash_keys=True needs a live '
                     r'Trax model'):
    from_trax(tmp_path / 'model.pkl.gz', trax_hash_keys=True)
