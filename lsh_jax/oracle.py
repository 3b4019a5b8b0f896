"""The NumPy reference under one name: `lsh_jax.reference.spec`, `.lab` and
`.decode` together (`lsh_jax.oracle.lsh_attention`,
`lsh_jax.oracle.our_simple_attend`, `lsh_jax.oracle.predict_step`, ...).
"""
from lsh_jax.reference.decode import *  # noqa: F401,F403
from lsh_jax.reference.lab import *  # noqa: F401,F403
from lsh_jax.reference.spec import *  # noqa: F401,F403
from lsh_jax.reference.spec import _check_chunking  # noqa: F401
