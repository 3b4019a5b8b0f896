"""The PyTorch peers, run in the benchmark's own venv (`peers.py`).

HF transformers' `LSHSelfAttention` (includes its query_key and value
projections, d_model = 64; its parameters are frozen so the backward pass
computes the input's gradient only) and lucidrains' `reformer_pytorch`
`LSHAttention` (takes qk and v directly). Same settings as the JAX cases;
lucidrains ties the chunk to its bucket size, so bucket_size = 64 gives
chunk 64 (the same attention FLOPs) with L / 64 buckets instead of 2L / 64.
"""
import time

import timing

DEPTH = 64
CHUNK_LEN = 64


def _auto_n_buckets(length):
  """Same rule as lsh_jax.auto_n_buckets (kept here: no jax in this venv)."""
  import math
  n = 2 * max(1, length // CHUNK_LEN)
  if n <= 128:
    return n
  first = 2**math.ceil(math.log2(math.sqrt(n)))
  return [first, 2 * (n // (2 * first))]


def hf_case(length, n_hashes, mode):
  import torch
  from transformers import ReformerConfig
  from transformers.models.reformer.modeling_reformer import LSHSelfAttention
  config = ReformerConfig(
      hidden_size=DEPTH, num_attention_heads=1, attention_head_size=DEPTH,
      num_hashes=n_hashes, num_buckets=_auto_n_buckets(length),
      lsh_attn_chunk_length=CHUNK_LEN, lsh_num_chunks_before=1,
      lsh_num_chunks_after=0, is_decoder=False,
      lsh_attention_probs_dropout_prob=0.0, attn_layers=['lsh'],
      max_position_embeddings=length, axial_pos_embds=False)
  layer = LSHSelfAttention(config).eval()
  for p in layer.parameters():
    p.requires_grad_(False)
  x = torch.randn(1, length, DEPTH)
  if mode == 'fwd':
    def call():
      with torch.no_grad():
        return layer(x)[0]
    return call
  ct = torch.randn(1, length, DEPTH)
  x.requires_grad_(True)

  def call():
    x.grad = None
    out = layer(x)[0]
    out.backward(ct)
    return x.grad
  return call


def lucidrains_case(length, n_hashes, mode):
  import torch
  from reformer_pytorch import LSHAttention
  layer = LSHAttention(bucket_size=CHUNK_LEN, n_hashes=n_hashes,
                       causal=False).eval()
  qk = torch.randn(1, length, DEPTH)
  v = torch.randn(1, length, DEPTH)
  if mode == 'fwd':
    def call():
      with torch.no_grad():
        return layer(qk, v)[0]
    return call
  ct = torch.randn(1, length, DEPTH)
  qk.requires_grad_(True)
  v.requires_grad_(True)

  def call():
    qk.grad = v.grad = None
    layer(qk, v)[0].backward(ct)
    return qk.grad, v.grad
  return call


CASES = {'hf': hf_case, 'lucidrains': lucidrains_case}


def versions():
  import torch
  return {'torch': torch.__version__, 'torch_threads': torch.get_num_threads(),
          **timing.package_versions(('transformers', 'reformer-pytorch'))}


def run(impl, length, n_hashes, mode, *, repeats, budget_s):
  import torch
  torch.manual_seed(0)
  call = CASES[impl](length, n_hashes, mode)
  base_mb = timing.rss_mb()
  t0 = time.perf_counter()
  call()  # warm-up (PyTorch has no compile step: this is the first call)
  first_s = time.perf_counter() - t0
  timing.reset_peak_rss()
  t0 = time.perf_counter()
  call()
  second_s = time.perf_counter() - t0
  stats = timing.time_calls(call, repeats=repeats, budget_s=budget_s,
                            first_call_s=second_s)
  return dict(stats, compile_s=None, first_call_s=first_s,
              base_rss_mb=base_mb, peak_rss_mb=timing.peak_rss_mb(),
              xla_temp_out_mb=None, versions=versions())
