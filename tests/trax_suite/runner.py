"""Runs the selected Trax 1.4.1 tests with lsh_jax's layers; prints a tally.

  PYTHONPATH=$PWD:$PWD/tests python -m trax_suite.runner [--baseline]
      [--junit PATH] [-k EXPR]

Each Trax test runs in one child pytest process (`trax_suite.plugin`
substitutes the classes before Trax's test modules are imported, so the
substitution never leaks into our own tests). `--baseline` runs the same
tests on Trax's own classes.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

from trax_suite import sources

# (file, test) pairs: the target set. efficient_attention_test.py
# without test_lsh_ff (LSHFF is a feed-forward layer) and the TF-backend
# test; decoding_test.py without the tests that load checkpoints or configs
# the sdist does not ship (the *_quality tests).
SELECTED = (
    ('efficient_attention_test.py', 'EfficientAttentionTest', (
        'test_self_attention', 'test_lsh_self_attention',
        'test_lsh_determinism_causal', 'test_lsh_determinism_non_causal',
        'test_lsh_self_attention_masked_non_causal',
        'test_pure_lsh_wrapper_causal_non_masked_weights_2',
        'test_pure_lsh_wrapper_causal_non_masked_weights_3',
        'test_pure_lsh_wrapper_non_causal_masked_weights_2',
        'test_pure_lsh_wrapper_non_causal_masked_weights_3',
        'test_lsh_and_pure_lsh_self_attention_equivalence',
        'test_fast_inference_self_attention')),
    ('terraformer_test.py', 'TerraformerTest', (
        'test_terraformer_quick_jax_efficient',
        'test_terraformer_quick_jax_causal',
        'test_terraformer_quick_jax_preembed',
        'test_terraformer_deterministic_eval',
        'test_terraformer_predict_equals_eval', 'test_terraformer_doubling',
        'test_terraformer_one_step')),
    ('trainer_lib_test.py', 'TraxTest', (
        'test_train_with_pure_lsh_attention',
        'test_train_with_mixed_lsh_attention')),
    ('decoding_test.py', 'DecodingTest', (
        'test_autoregressive_sample_reformerlm',
        'test_autoregressive_sample_reformerlm_lsh',
        'test_autoregressive_sample_terraformer_lsh',
        'test_autoregressive_sample_terraformer_pure_lsh')),
    ('reformer_test.py', 'ReformerTest', (
        'test_reformer_lm_forward_shape', 'test_reformer_lm_lsh')),
    # The slowest last (Trax's reference code in Python loops).
    ('efficient_attention_test.py', 'EfficientAttentionTest', (
        'test_batching_self_attention', 'test_batching_lsh_self_attention')),
)


def test_ids():
  return [f'{f}::{c}::{t}' for f, c, tests in SELECTED for t in tests]


def run(*, baseline=False, junit=None, keyword=None, timeout=7200):
  """Runs the selection; returns {test id: (outcome, message)}."""
  paths = sources.test_files()
  test_dir = os.path.dirname(next(iter(paths.values())))
  with open(os.path.join(test_dir, 'pytest.ini'), 'w') as f:
    # Keeps our setup.cfg's settings out; xunit1 keeps test properties.
    f.write('[pytest]\njunit_family = xunit1\n')
  junit = junit or os.path.join(tempfile.mkdtemp(), 'trax_suite.xml')
  repo = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3',
             LSH_TRAX_SUITE_SUBSTITUTE='0' if baseline else '1',
             PYTHONPATH=os.pathsep.join(
                 [repo, os.path.join(repo, 'tests'),
                  os.environ.get('PYTHONPATH', '')]))
  command = [sys.executable, '-m', 'pytest', '-p', 'trax_suite.plugin',
             '-p', 'no:cacheprovider', '-v', '-rfE', f'--junitxml={junit}',
             *test_ids()]
  if keyword:
    command += ['-k', keyword]
  subprocess.run(command, cwd=test_dir, env=env, timeout=timeout,
                 check=False)
  return parse_junit(junit)


def parse_junit(path):
  results = {}
  for case in ET.parse(path).getroot().iter('testcase'):
    file = case.get('classname').split('.')[0] + '.py'
    name = f"{file}::{case.get('classname').split('.')[-1]}::" \
           f"{case.get('name')}"
    outcome, message = 'passed', ''
    for tag in ('failure', 'error', 'skipped'):
      node = case.find(tag)
      if node is not None:
        outcome = {'failure': 'failed', 'error': 'error',
                   'skipped': 'skipped'}[tag]
        message = (node.get('message') or '').splitlines()[0][:200] \
            if node.get('message') else ''
        break
    built = ''
    for prop in case.iter('property'):
      if prop.get('name') == 'attention':
        built = prop.get('value')
    results[name] = (outcome, message, built)
  return results


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--baseline', action='store_true')
  parser.add_argument('--junit')
  parser.add_argument('-k', dest='keyword')
  args = parser.parse_args(argv)
  results = run(baseline=args.baseline, junit=args.junit,
                keyword=args.keyword)
  passed = sum(result[0] == 'passed' for result in results.values())
  for name in test_ids():
    outcome, message, built = results.get(name, ('not run', '', ''))
    print(f'{outcome:8} {name}  [{built}]  {message}')
  print(f'passed {passed} / {len(test_ids())}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
