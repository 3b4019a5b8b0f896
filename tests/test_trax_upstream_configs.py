"""Trax 1.4.1's efficient-attention configs, lsh_jax versions.

The configs are in configs/trax/ (packaged as lsh_jax/configs/trax/).

Each config is parsed as a Trax user would (its `include`s found through
gin's search path), shrunk by extra bindings (layers, width, length, chunk
and bucket counts) so it fits a CPU test, built in train mode and trained a
few SGD steps on random tokens of the dataset's shape (its vocabulary; a
shorter length). Expected: every attention layer in the model is lsh_jax's
(none of Trax's), the loss is finite and every attention layer's weights
move. These are properties of the configs themselves, not numbers: no
expected value is hard-coded.

Trax's encoder-decoder `Reformer` builds its attention in code: its config
selects lsh_jax's layers through `lsh_jax.WithLSHJaxLayers`
(tests/test_trax_models.py).
"""
import dataclasses
import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsh_jax.apps import commands
from trax_testing import trax_env  # noqa: F401  (fixture)

CONFIG_DIR = os.path.join(commands.CONFIG_DIR, 'trax')
FAMILY = ('SelfAttention', 'LSHSelfAttention', 'PureLSHSelfAttention',
          'PureLSHSelfAttentionWrapper', 'MixedLSHSelfAttention',
          'EncDecAttention')

# Reduced model size shared by every config; `{m}` is the model's gin name.
SMALL = """
{m}.d_model = 32
{m}.d_ff = 64
{m}.n_heads = 2
"""
MAX_LEN = '{m}.max_len = {length}\n'  # HourglassLM has no max_len
SMALL_ATTENTION = """
{m}.d_attention_key = 16
{m}.d_attention_value = 16
"""
# The configs' chunk lengths (16..512) shrink to 8 or 16 and their bucket
# counts to what a 64-128 token sequence needs; the other attention settings
# (hashes, chunks before/after, dropout, causality) stay Trax's.
LSH_SMALL = """
lsh_jax.LSHSelfAttention.chunk_len = 16
lsh_jax.LSHSelfAttention.n_buckets = {buckets}
"""
SA_SMALL = 'lsh_jax.SelfAttention.chunk_len = 8\n'
PURE_SMALL = """
lsh_jax.PureLSHSelfAttention.chunk_len = 16
lsh_jax.PureLSHSelfAttention.n_buckets = {buckets}
"""


@dataclasses.dataclass(frozen=True)
class Case:
  """One config: its model's gin name, input kind and the extra bindings."""
  name: str
  model: str            # gin name of train.model's function
  kind: str             # 'lm': tokens -> logits; 'encdec': (in, out) pair
  vocab: int            # the dataset's vocabulary (kept)
  length: int           # reduced sequence length
  extra: str            # bindings shrinking layers/length (besides SMALL)
  needs: tuple          # lsh_jax.trax classes the config names


CASES = (
    Case('reformer_copy', 'ReformerLM', 'lm', 13, 64,
         'ReformerLM.n_layers = 2\n' + LSH_SMALL.format(buckets='[2, 4]'),
         ('LSHSelfAttention',)),
    Case('reformer_enwik8', 'ReformerLM', 'lm', 258, 128,
         'n_layers = 4\nReformerLM.pos_axial_shape = (8, 16)\n'
         'ReformerLM.pos_d_axial_embs = (16, 16)\n' + SMALL_ATTENTION +
         SA_SMALL + LSH_SMALL.format(buckets=8),
         ('SelfAttention', 'LSHSelfAttention')),
    Case('reformer_c4', 'ReformerLM', 'lm', 32000, 128,
         'n_layers = 4\nMAX_EVAL_LENGTH = 128\n'
         'ReformerLM.pos_axial_shape = (8, 16)\n' + SMALL_ATTENTION +
         SA_SMALL + LSH_SMALL.format(buckets=8),
         ('SelfAttention', 'LSHSelfAttention')),
    Case('reformer_imagenet64', 'ReformerLM', 'lm', 256, 96,
         'n_layers = 2\nReformerLM.pos_axial_shape = (4, 8, 3)\n'
         'ReformerLM.pos_d_axial_embs = (8, 8, 16)\n' + SMALL_ATTENTION +
         LSH_SMALL.format(buckets=6), ('LSHSelfAttention',)),
    Case('reformer_bair_robot_pushing', 'ReformerLM', 'lm', 256, 96,
         'n_layers = 2\nReformerLM.pos_axial_shape = (2, 4, 4, 3)\n'
         'ReformerLM.pos_d_axial_embs = (8, 8, 8, 8)\n' + SMALL_ATTENTION +
         SA_SMALL, ('SelfAttention',)),
    Case('scientific_papers_reformer_lm', 'ReformerLM', 'lm', 32000, 128,
         'n_layers = 2\nmax_len = 128\nd_model = 32\nd_ff = 64\nn_heads = 2\n'
         'pos_d_axial_embs = (16, 16)\nReformerLM.pos_axial_shape = (8, 16)\n'
         + SMALL_ATTENTION + LSH_SMALL.format(buckets=8),
         ('LSHSelfAttention',)),
    Case('scientific_papers_terraformer', 'ConfigurableTerraformer', 'encdec',
         32000, 128,
         'n_layers = 1\nmax_len = 128\nd_model = 32\nd_ff = 64\nn_heads = 2\n'
         'pos_d_axial_embs = (16, 16)\n'
         'ConfigurableTerraformer.pos_axial_shape = (8, 16)\n' +
         SMALL_ATTENTION + LSH_SMALL.format(buckets=8),
         ('LSHSelfAttention',)),
    Case('scientific_papers_terraformer_pretrained',
         'ConfigurableTerraformer', 'encdec', 32000, 128,
         'n_layers = 1\nmax_len = 128\nd_model = 32\nd_ff = 64\nn_heads = 2\n'
         + SMALL_ATTENTION + PURE_SMALL.format(buckets=8),
         ('PureLSHSelfAttention', 'PureLSHSelfAttentionWrapper')),
    Case('terraformer_copy', 'ConfigurableTerraformer', 'encdec', 13, 64,
         'ConfigurableTerraformer.n_encoder_layers = 1\n'
         'ConfigurableTerraformer.n_decoder_layers = 1\n' + SMALL_ATTENTION +
         LSH_SMALL.format(buckets='[2, 4]'), ('LSHSelfAttention',)),
    Case('terraformer_purelsh_copy', 'ConfigurableTerraformer', 'encdec', 13,
         64,
         'ConfigurableTerraformer.n_encoder_layers = 1\n'
         'ConfigurableTerraformer.n_decoder_layers = 1\n' + SMALL_ATTENTION +
         LSH_SMALL.format(buckets='[2, 4]') +
         PURE_SMALL.format(buckets='[2, 4]'),
         ('PureLSHSelfAttention', 'PureLSHSelfAttentionWrapper')),
    Case('terraformer_wmt_ende', 'ConfigurableTerraformer', 'encdec', 33300,
         128,
         'MAX_EVAL_LENGTH = 128\n'
         'ConfigurableTerraformer.n_encoder_layers = 1\n'
         'ConfigurableTerraformer.n_decoder_layers = 1\n'
         'ConfigurableTerraformer.pos_axial_shape = (8, 16)\n'
         'ConfigurableTerraformer.pos_d_axial_embs = (16, 16)\n' +
         SMALL_ATTENTION + LSH_SMALL.format(buckets=8),
         ('LSHSelfAttention',)),
    Case('hourglass_imagenet64', 'HourglassLM', 'lm', 256, 96,
         "HourglassLM.vanilla_layers = (1, 1)\nHourglassLM.hierarchy = '1@3'\n"
         + PURE_SMALL.format(buckets=4),
         ('PureLSHSelfAttention', 'PureLSHSelfAttentionWrapper')),
    Case('reformer_wmt_ende', 'Reformer', 'encdec', 33300, 64,
         'Reformer.n_encoder_layers = 1\nReformer.n_decoder_layers = 1\n',
         ('EncDecAttention', 'SelfAttention')),
)

def test_every_listed_trax_config_has_an_lsh_jax_version():
  names = sorted(name[:-4] for name in os.listdir(CONFIG_DIR)
                 if name.endswith('.gin'))
  assert names == sorted(case.name for case in CASES)


def sublayers(layer):
  yield layer
  for sub in layer.sublayers:
    yield from sublayers(sub)


def parse(case):
  gin.clear_config()
  gin.add_config_file_search_path(CONFIG_DIR)
  gin.parse_config_file(os.path.join(CONFIG_DIR, case.name + '.gin'))
  small = SMALL.format(m=case.model)
  if case.model != 'HourglassLM':
    small += MAX_LEN.format(m=case.model, length=case.length)
  gin.parse_config(small + case.extra.format(m=case.model))


def batch(case, seed=0):
  """Random tokens of the dataset's vocabulary: what the model reads."""
  keys = jax.random.split(jax.random.PRNGKey(seed), 2)
  shape = (2, case.length)
  # Token 0 is padding in Trax's losses and decoders: draw real tokens.
  inputs = jax.random.randint(keys[0], shape, 1, case.vocab)
  targets = jax.random.randint(keys[1], shape, 1, case.vocab)
  if case.kind == 'lm':
    return inputs, inputs
  return (inputs, targets), targets


def cross_entropy(logits, targets):
  log_p = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(jnp.take_along_axis(log_p, targets[..., None], -1))


def build(case):
  """The config's model in train mode (not initialised: no compilation),
  checked to hold the lsh_jax layers the config names and none of Trax's
  attention layers."""
  import lsh_jax.trax as ours  # pylint: disable=import-outside-toplevel
  parse(case)
  model_fn = gin.query_parameter('train.model').scoped_configurable_fn
  model = model_fn(mode='train')
  layers = list(sublayers(model))
  ours_found = {type(layer).__name__ for layer in layers
                if isinstance(layer, tuple(getattr(ours, name)
                                           for name in ours.LAYERS))}
  assert set(case.needs) <= ours_found
  theirs = [layer for layer in layers if type(layer).__name__ in FAMILY and
            not type(layer).__module__.startswith('lsh_jax')]
  assert not theirs, f'Trax attention layers left in the model: {theirs}'
  return model


@pytest.mark.parametrize('case', CASES, ids=lambda case: case.name)
def test_config_parses_and_builds_with_lsh_jax_layers(trax_env, case):
  """All 13 in `make test`: parsed (includes and all), built, lsh_jax's
  layers in place. Training them is the next test."""
  del trax_env  # only sets Trax up
  build(case)


# `make test` trains two configs that between them use every kind of
# attention binding (an SA + LSH list, the pure-LSH wrapper with scopes and
# an include chain); the other eleven train in the long tier (`make fuzz`).
FAST = ('reformer_enwik8', 'terraformer_purelsh_copy')


@pytest.mark.parametrize('case', [
    case if case.name in FAST else pytest.param(case, marks=pytest.mark.long)
    for case in CASES], ids=lambda case: case.name)
def test_config_builds_with_lsh_jax_layers_and_trains(trax_env, case):
  model = build(case)
  inputs, targets = batch(case)
  signature = trax_env.shapes.signature(inputs)
  weights, state = model.init(signature, rng=jax.random.PRNGKey(1))

  def loss_fn(weights, state, rng):
    out, new_state = model.pure_fn(inputs, weights, state, rng)
    logits = out[0] if isinstance(out, (tuple, list)) else out
    return cross_entropy(logits, targets), new_state

  @jax.jit
  def step(weights, state, rng):
    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        weights, state, rng)
    new_weights = jax.tree_util.tree_map(lambda w, g: w - 0.1 * g, weights,
                                         grads)
    return loss, new_weights, new_state

  def our_layer_weights():
    # PureLSHSelfAttention is weightless: its wrapper holds the weights.
    return [layer.weights for layer in sublayers(model)
            if type(layer).__module__.startswith('lsh_jax')
            and jax.tree_util.tree_leaves(layer.weights)]

  start = our_layer_weights()
  losses = []
  for i in range(3):
    loss, weights, state = step(weights, state, jax.random.PRNGKey(10 + i))
    losses.append(float(loss))
  assert np.all(np.isfinite(losses)), losses
  # Every attention layer of ours learned: its weights moved.
  model.weights, model.state = weights, state
  end = our_layer_weights()
  moved = [max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree_util.tree_leaves(w0), jax.tree_util.tree_leaves(w1)))
           for w0, w1 in zip(start, end)]
  assert moved and min(moved) > 0, moved
