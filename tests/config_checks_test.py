"""Tests for pav_jax.config_checks: each bad value is named by its key."""

import pytest

from pav_jax import config_checks
from pav_jax import defaults


def test_defaults_and_shipped_configs_are_valid():
  config_checks.validate(defaults.base_config())
  for name in ("demo", "arithmetic", "countdown"):
    config_checks.validate(defaults.config_file_module(name).get_config())


@pytest.mark.parametrize("key, value, message", [
    ("sft.batch_size", 0, "sft.batch_size must be a positive integer, got 0"),
    ("sft.batch_size", -4, "sft.batch_size must be a positive integer, got -4"),
    ("verifier.batch_size", 0, "verifier.batch_size must be a positive"),
    ("sft.steps", -1, "sft.steps must be an integer >= 0, got -1"),
    ("sft.ckpt_every", 0, "sft.ckpt_every must be a positive integer, got 0"),
    ("sft.log_every", 0, "sft.log_every must be a positive integer, got 0"),
    ("sft.eval_every", -1, "sft.eval_every must be an integer >= 0"),
    ("sample.cache_size", 0, "sample.cache_size must be a positive integer"),
    ("label.cache_size", -1, "label.cache_size must be a positive integer"),
    ("search.ns", "2,x",
     "search.ns must be a comma-separated list of positive integers, "
     "got '2,x'"),
    ("search.ns", "0", "search.ns must be a comma-separated list of positive"),
    ("search.ns", "", "search.ns must be a comma-separated list of positive"),
    ("search.sweep_alphas", "0,-1", "search.sweep_alphas must be a comma"),
    ("sample.temperature", 0.0, "sample.temperature must be a number > 0"),
    ("sample.top_p", 0.0, "sample.top_p must be a number in (0, 1]"),
    ("sample.top_p", 1.5, "sample.top_p must be a number in (0, 1]"),
    ("label.n_mc", 0, "label.n_mc must be a positive integer, got 0"),
    ("label.n_cov", 0, "label.n_cov must be a positive integer, got 0"),
    ("label.mode", "forks", "label.mode must be one of ['fork', 'reprefill']"),
    ("pav.alpha", -0.5, "pav.alpha must be a number >= 0, got -0.5"),
    ("pav.prover_k", 0, "pav.prover_k must be a positive integer, got 0"),
    ("sft.learning_rate", 0.0, "sft.learning_rate must be a number > 0"),
    ("model.num_layers", 0, "model.num_layers must be a positive integer"),
    ("mesh.data", 0, "mesh.data must be a positive integer or -1"),
])
def test_bad_values_are_named(key, value, message):
  config = defaults.base_config()
  section, name = key.split(".")
  with config.unlocked():
    config[section][name] = value
  with pytest.raises(config_checks.ConfigError) as e:
    config_checks.validate(config)
  assert message in str(e.value)


def test_all_errors_are_listed_and_unknown_keys_ignored():
  config = {"sft": {"batch_size": 0, "log_every": 0},
            "rl": {"batch_size": -1, "something_new": "x"}, "extra": 3}
  found = config_checks.errors(config)
  assert len(found) == 3
  assert any(f.startswith("rl.batch_size") for f in found)


def test_rules_extend():
  rules = [("rl.kl_coef", config_checks.number(0))] + config_checks.RULES
  assert config_checks.errors({"rl": {"kl_coef": -1.0}}, rules) == [
      "rl.kl_coef must be a number >= 0, got -1.0"]


def test_parse_int_list():
  assert config_checks.parse_int_list("search.ns", "2, 4,8") == [2, 4, 8]
  assert config_checks.parse_int_list("s", "", lo=0, allow_empty=True) == []
  with pytest.raises(config_checks.ConfigError,
                     match="search.ns must be a comma-separated list of "
                           "positive integers, got '2,x'"):
    config_checks.parse_int_list("search.ns", "2,x")


def test_new_search_verifier_and_rl_keys_are_checked_at_load_time():
  c = defaults.base_config()
  c.search.beam_start = "two"
  c.search.mc_rollouts = -1
  c.verifier.design = "probe"
  c.rl.estimator = "gae"
  c.rl.scorer = "oracle"
  c.rl.policy_lr = 0.0
  found = "\n".join(config_checks.errors(c))
  for key in ("search.beam_start", "search.mc_rollouts", "verifier.design",
              "rl.estimator", "rl.scorer", "rl.policy_lr"):
    assert key in found
