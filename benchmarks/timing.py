"""Timing and memory helpers shared by every case (standard library only).

Imported both by the JAX cases (project venv) and the PyTorch cases (the
peers' venv), so it must not import jax, numpy or torch.
"""
import statistics
import time


def _status(field):
  """A `/proc/self/status` field in MB (VmRSS, VmHWM), or None."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith(field + ':'):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return None


def rss_mb():
  """Current resident set size of this process, MB."""
  return _status('VmRSS')


def peak_rss_mb():
  """Peak resident set size (high-water mark) of this process, MB."""
  hwm = _status('VmHWM')
  if hwm is None:  # not Linux: ru_maxrss is KB on Linux, bytes on macOS
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
  return hwm


def reset_peak_rss():
  """Resets the high-water mark to the current RSS (Linux >= 4.0).

  Called after compilation, so the reported peak is that of the timed calls,
  not of the compiler. Returns False where the kernel does not allow it.
  """
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def time_calls(call, *, repeats, budget_s, first_call_s):
  """Times `call()` (which must block until its result is ready).

  Runs up to `repeats` timed calls, fewer when they would take more than
  `budget_s` in all (at least one). `first_call_s` is the warm-up call's
  time, used to size the loop before any timed call.

  Returns:
    A dict with the per-call times (ms), their median, min and max.
  """
  n = max(1, min(repeats, int(budget_s / max(first_call_s, 1e-6))))
  times = []
  start = time.perf_counter()
  for _ in range(n):
    t0 = time.perf_counter()
    call()
    times.append((time.perf_counter() - t0) * 1e3)
    if time.perf_counter() - start > budget_s:
      break
  return {
      'times_ms': [round(t, 4) for t in times],
      'median_ms': statistics.median(times),
      'min_ms': min(times),
      'max_ms': max(times),
  }


def package_versions(names):
  """{name: installed version} of those of `names` that are installed."""
  import importlib.metadata as md  # pylint: disable=import-outside-toplevel
  out = {}
  for name in names:
    try:
      out[name] = md.version(name)
    except md.PackageNotFoundError:
      pass
  return out
