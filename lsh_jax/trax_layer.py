"""Old import path of the Trax layers, kept so existing code keeps working.

`lsh_jax.trax_layer.LSHSelfAttention` is `lsh_jax.trax.LSHSelfAttention`
(and likewise for every class of `lsh_jax.trax`); new code imports
`lsh_jax.trax`. Importing either loads Trax.
"""
from lsh_jax.trax import *  # noqa: F401,F403
from lsh_jax.trax import __all__  # noqa: F401
