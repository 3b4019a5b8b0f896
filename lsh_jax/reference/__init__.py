"""The plain NumPy reference (float64, written to be read).

  spec.py    the algorithm of docs/algorithm.md, step by step: the oracle
             every JAX function is tested against
  lab.py     the course lab's teaching helpers, as the lab wrote them
  decode.py  the reference for incremental decoding (`mode='predict'`)

`lsh_jax.oracle` re-exports all three under one name.
"""
