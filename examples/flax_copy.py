"""Train the Flax ReformerLM (reversible, LSH attention) on the copy task.

    PYTHONPATH=. python examples/flax_copy.py [steps]

The model is `lsh_jax.flax.ReformerLM` with the Trax demo's sizes
(`lsh_jax.apps.flax_copy.copy_model`: LSHSelfAttention, 2 hash rounds);
after training, the same parameters are evaluated with 1, 2, 4 and
8 hash rounds and with dense attention. `lsh-jax demo --framework flax`
runs the same and also saves a checkpoint.
"""
import sys

from lsh_jax.apps import flax_copy

config = flax_copy.CopyConfig()
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
model, losses = flax_copy.train(config, steps=steps)
for name, accuracy in flax_copy.evaluate(model, config).items():
  print(f'{name:24s} {accuracy:7.2%}')
