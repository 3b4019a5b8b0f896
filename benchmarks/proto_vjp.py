"""Prototype for perf_findings.md: a hand-written VJP for the chunked attention.

Not part of the benchmark table. Compares, for R rounds of already-sorted
inputs (one chunk back, exclude-self by position), the forward+backward of
(a) autodiff through einsum/logsumexp/exp (what lsh_jax does now) with
(b) a custom_vjp that keeps only out and lse and recomputes the
probabilities in the backward (dp = g v^T, ds = p * (dp - rowsum(g * out)),
dq = ds k, dk = ds^T q, dv = p^T g), the FlashAttention-style backward.

  .venv/bin/python benchmarks/proto_vjp.py 16384 4
"""
import statistics
import sys
import time

import jax
import jax.numpy as jnp

C, D = 64, 64
SELF = -1e5


def _logits(q, k_ext, qpos, kpos):
  # q [N, C, D], k_ext [N+1, C, D] -> window = chunks (c-1, c): [N, C, 2C]
  k = jnp.concatenate([k_ext[:-1], k_ext[1:]], axis=1)  # [N, 2C, D]
  kp = jnp.concatenate([kpos[:-1], kpos[1:]], axis=1)  # [N, 2C]
  dots = jnp.einsum('ncd,nkd->nck', q, k)
  return jnp.where(qpos[:, :, None] == kp[:, None, :], dots + SELF, dots), k


def attend_autodiff(q, k_ext, v_ext, qpos, kpos):
  dots, _ = _logits(q, k_ext, qpos, kpos)
  lse = jax.nn.logsumexp(dots, -1, keepdims=True)
  p = jnp.exp(dots - lse)
  v = jnp.concatenate([v_ext[:-1], v_ext[1:]], axis=1)
  return jnp.einsum('nck,nkd->ncd', p, v), lse[..., 0]


@jax.custom_vjp
def attend_custom(q, k_ext, v_ext, qpos, kpos):
  return attend_autodiff(q, k_ext, v_ext, qpos, kpos)


def _fwd(q, k_ext, v_ext, qpos, kpos):
  out, lse = attend_autodiff(q, k_ext, v_ext, qpos, kpos)
  return (out, lse), (q, k_ext, v_ext, qpos, kpos, out, lse)


def _bwd(res, grads):
  q, k_ext, v_ext, qpos, kpos, out, lse = res
  g, g_lse = grads
  dots, k = _logits(q, k_ext, qpos, kpos)
  p = jnp.exp(dots - lse[..., None])  # recomputed, [N, C, 2C]
  v = jnp.concatenate([v_ext[:-1], v_ext[1:]], axis=1)
  dv = jnp.einsum('nck,ncd->nkd', p, g)  # [N, 2C, Dv]
  dp = jnp.einsum('ncd,nkd->nck', g, v)
  delta = jnp.sum(g * out, -1, keepdims=True)
  ds = p * (dp - delta + g_lse[..., None])  # lse's own gradient is p
  dq = jnp.einsum('nck,nkd->ncd', ds, k)
  dk = jnp.einsum('nck,ncd->nkd', ds, q)
  fold = lambda x: (jnp.pad(x[:, :C], ((0, 1), (0, 0), (0, 0)))
                    + jnp.pad(x[:, C:], ((1, 0), (0, 0), (0, 0))))
  return dq, fold(dk), fold(dv), None, None


attend_custom.defvjp(_fwd, _bwd)


def blocked(attend, n_blocks):
  """lax.map over blocks of chunks, each block with its one-chunk halo."""
  def run(q, k_ext, v_ext, qpos, kpos):
    n = q.shape[0]
    b = n // n_blocks
    halo = lambda x: jnp.stack([x[i * b:i * b + b + 1] for i in range(n_blocks)])
    split = lambda x: x.reshape(n_blocks, b, *x.shape[1:])
    out, lse = jax.lax.map(lambda a: attend(*a), (
        split(q), halo(k_ext), halo(v_ext), split(qpos), halo(kpos)))
    return out.reshape(q.shape), lse.reshape(qpos.shape)
  return run


def main():
  length, rounds = int(sys.argv[1]), int(sys.argv[2])
  n = length // C
  ks = jax.random.split(jax.random.PRNGKey(0), 4)
  q = jax.random.normal(ks[0], (rounds, n, C, D))
  k_ext = jax.random.normal(ks[1], (rounds, n + 1, C, D)) / 8
  v_ext = jax.random.normal(ks[2], (rounds, n + 1, C, D))
  qpos = jax.vmap(lambda k: jax.random.permutation(k, length))(
      jax.random.split(ks[3], rounds)).reshape(rounds, n, C)
  kpos = jnp.concatenate([qpos[:, -1:], qpos], axis=1)
  ct = jax.random.normal(ks[0], (rounds, n, C, D))
  n_blocks = max(1, n * rounds * C * 2 * C // 2**17)
  variants = {
      'autodiff, one batch': attend_autodiff,
      'custom_vjp, one batch': attend_custom,
      f'autodiff, {n_blocks} blocks': blocked(attend_autodiff, n_blocks),
      f'custom_vjp, {n_blocks} blocks': blocked(attend_custom, n_blocks),
  }
  ref = None
  for name, attend in variants.items():
    f = jax.vmap(attend)
    loss = lambda q, k, v: jnp.vdot(f(q, k, v, qpos, kpos)[0], ct)
    g = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    fwd = jax.jit(lambda q, k, v: f(q, k, v, qpos, kpos)[0])
    for label, fn in (('fwd', fwd), ('fwd+bwd', g)):
      out = jax.block_until_ready(fn(q, k_ext, v_ext))
      ts = []
      for _ in range(5):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(q, k_ext, v_ext))
        ts.append((time.perf_counter() - t0) * 1e3)
      print(f'L={length} R={rounds} {name:28s} {label:8s} median '
            f'{statistics.median(ts):7.1f} ms  min {min(ts):7.1f} ms',
            flush=True)
    if ref is None:
      ref = out
    else:
      err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(out, ref))
      print(f'   max |grad - autodiff grad| = {err:.1e}')


if __name__ == '__main__':
  main()
