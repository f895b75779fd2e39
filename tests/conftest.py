"""Test set-up: 8 fake CPU devices, set before JAX is imported.

Also, for the run's time (nothing a test checks changes):
- One persistent JAX compilation cache per test run (a temporary directory,
  removed at the end), shared by the xdist workers and every subprocess the
  tests start (they inherit the environment): tests and pipeline runs that
  build the same programs compile them once. Set JAX_COMPILATION_CACHE_DIR
  yourself to use another (kept) directory.
- Test files are ordered slowest first (`_SLOW_FIRST`), so that with
  `--dist loadscope --no-loadscope-reorder` (the Makefile) the two workers
  start on the long files and end on short ones, instead of one worker
  finishing a long file alone at the end.
"""

import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

_OWN_CACHE = None  # the cache directory this process made (the controller)
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="pav_jax_test_jax_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

# Slowest test files first (measured with --durations); others follow in
# their usual order.
_SLOW_FIRST = (
    "train_lib_test.py",
    "train_rl_test.py",
    "labelling_test.py",
    "gsm8k_smoke_test.py",
    "train_verifier_test.py",
    "search_test.py",
    "rl_stage_test.py",
    "transformer_test.py",
    "verifier_test.py",
    "sampler_test.py",
    "sharded_sampling_test.py",
    "didactic_test.py",
    "steps_test.py",
    "hf_gemma_test.py",
)


def pytest_collection_modifyitems(session, config, items):
  del session, config
  rank = {name: i for i, name in enumerate(_SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_unconfigure(config):
  if _OWN_CACHE and not hasattr(config, "workerinput"):
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)
