"""Validates a run's config at load time, naming the key of each bad value.

`main.py` calls `validate(config)` before any stage runs, so `sft.batch_size=0`
or `search.ns=2,x` stop at once with "sft.batch_size must be a positive
integer, got 0" instead of a ZeroDivisionError minutes later.

The rules are a table of (fnmatch pattern on dotted keys, check): the first
pattern matching a key decides; keys no rule matches (strings, paths, flags)
pass, and rules whose keys are absent do nothing. To cover a new section
(e.g. `rl.*`), add rows to `RULES`; the generic rows (`*.batch_size`,
`*.steps`, `*.learning_rate`, ...) already apply to it.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping
from typing import Any

from pav_jax import identity


class ConfigError(ValueError):
  """One or more config values are invalid (all are listed)."""


Check = Callable[[str, Any], str | None]  # (key, value) -> error or None


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
  return (isinstance(v, (int, float)) and not isinstance(v, bool)
          and math.isfinite(v))


def int_at_least(lo: int, what: str | None = None) -> Check:
  """An integer >= lo ("a positive integer" for lo == 1)."""
  what = what or {1: "a positive integer", 0: "an integer >= 0"}.get(
      lo, f"an integer >= {lo}")

  def check(key: str, v: Any) -> str | None:
    if not _is_int(v) or v < lo:
      return f"{key} must be {what}, got {v!r}"
    return None
  return check


def number(lo: float | None = None, hi: float | None = None, *,
           lo_open: bool = False, hi_open: bool = False) -> Check:
  """A finite number in the interval [lo, hi] (open ends as asked)."""
  left = "(" if lo_open else "["
  right = ")" if hi_open else "]"
  if lo is not None and hi is None and lo == 0:
    what = "> 0" if lo_open else ">= 0"
  elif hi is None:
    what = f"{'>' if lo_open else '>='} {lo}"
  else:
    what = f"in {left}{lo}, {hi}{right}"

  def check(key: str, v: Any) -> str | None:
    bad = not _is_num(v)
    if not bad and lo is not None:
      bad = v <= lo if lo_open else v < lo
    if not bad and hi is not None:
      bad = v >= hi if hi_open else v > hi
    if bad:
      return f"{key} must be a number {what}, got {v!r}"
    return None
  return check


def one_of(*choices: Any) -> Check:
  def check(key: str, v: Any) -> str | None:
    if v not in choices:
      return f"{key} must be one of {list(choices)}, got {v!r}"
    return None
  return check


def mesh_axis(key: str, v: Any) -> str | None:
  if not _is_int(v) or (v < 1 and v != -1):
    return f"{key} must be a positive integer or -1 (all devices), got {v!r}"
  return None


def parse_int_list(key: str, text: Any, lo: int = 1,
                   allow_empty: bool = False) -> list[int]:
  """Parses "2,4,8" into [2, 4, 8]; raises ConfigError naming `key`.

  Args:
    key: The config key (for the message).
    text: The value (a string; an int or a list of ints is accepted).
    lo: Every item must be >= lo (1: positive integers).
    allow_empty: Whether "" means an empty list.
  """
  what = ("positive integers" if lo == 1 else "non-negative integers"
          if lo == 0 else f"integers >= {lo}")
  error = ConfigError(
      f"{key} must be a comma-separated list of {what}, got {text!r}")
  if _is_int(text):
    items = [text]
  elif isinstance(text, (list, tuple)):
    items = list(text)
  elif isinstance(text, str):
    parts = [p.strip() for p in text.split(",")]
    if parts == [""]:
      if allow_empty:
        return []
      raise error
    items = []
    for p in parts:
      try:
        items.append(int(p))
      except ValueError:
        raise error from None
  else:
    raise error
  if not items and not allow_empty:
    raise error
  if any(not _is_int(i) or i < lo for i in items):
    raise error
  return items


def int_list(lo: int = 1, allow_empty: bool = False) -> Check:
  def check(key: str, v: Any) -> str | None:
    try:
      parse_int_list(key, v, lo, allow_empty)
    except ConfigError as e:
      return str(e)
    return None
  return check


def float_list(lo: float = 0.0) -> Check:
  """A comma-separated list of finite numbers >= lo (non-empty)."""
  def check(key: str, v: Any) -> str | None:
    error = (f"{key} must be a comma-separated list of numbers >= {lo}, "
             f"got {v!r}")
    parts = v.split(",") if isinstance(v, str) else (
        list(v) if isinstance(v, (list, tuple)) else [v])
    try:
      nums = [float(p) for p in parts]
    except (TypeError, ValueError):
      return error
    if not nums or any(not math.isfinite(x) or x < lo for x in nums):
      return error
    return None
  return check


def anything(key: str, v: Any) -> str | None:
  del key, v
  return None


POSITIVE = int_at_least(1)
NON_NEGATIVE = int_at_least(0)

# First match wins: specific rows before generic ones.
RULES: list[tuple[str, Check]] = [
    # Run control.
    ("seed", NON_NEGATIVE),
    ("*.kill_at_step", anything),
    ("mesh.*", mesh_axis),
    # Task, tokenizer, model.
    ("task.num_train", POSITIVE),
    ("task.num_eval", POSITIVE),
    ("tokenizer.vocab_size", POSITIVE),
    ("model.sliding_window", NON_NEGATIVE),
    ("model.query_pre_attn_scalar", number(0)),
    ("model.attn_logits_soft_cap", number(0)),
    ("model.final_logit_soft_cap", number(0)),
    ("model.rope_base*", number(0, lo_open=True)),
    ("model.num_*", POSITIVE),
    ("model.*_dim", POSITIVE),
    ("model.vocab_size", POSITIVE),
    ("model.max_seq_len", POSITIVE),
    ("model.norm_eps", number(0, lo_open=True)),
    # Sampling.
    ("*.temperature", number(0, lo_open=True)),
    ("*.top_p", number(0, 1, lo_open=True)),
    ("*.top_k", NON_NEGATIVE),
    # The PAV.
    ("*.alpha", number(0)),
    ("*.prover_k", POSITIVE),
    # Labelling.
    ("label.n_mc", POSITIVE),
    ("label.n_cov", POSITIVE),
    ("label.num_eval_prompts", NON_NEGATIVE),
    ("label.mode", one_of("fork", "reprefill")),
    ("label.first_pit_high", number(0, 1)),
    ("label.first_pit", one_of("off", "filter", "bisect")),
    ("label.pit_high", number(0, 1)),
    ("label.n_pit", POSITIVE),
    ("label.pit_topup", one_of(True, False)),
    ("label.n_mc_min", NON_NEGATIVE),
    ("label.mc_tol", number(0, 1)),
    ("label.mc_alloc", one_of("stop", "neyman")),
    # Search.
    ("search.ns", int_list(1)),
    ("search.seeds", int_list(0, allow_empty=True)),
    ("search.expansions", POSITIVE),
    ("search.sweep_alphas", float_list(0.0)),
    ("search.sweep_prover_ks", int_list(1)),
    ("search.sweep_prover_ns", int_list(1)),
    ("search.sweep_seeds", int_list(0)),
    ("search.sweep_n", POSITIVE),
    ("search.sweep_prompts", POSITIVE),
    ("search.split", one_of("train", "validation", "test")),
    ("search.beam_start", one_of("beam", "one")),
    ("search.mc_rollouts", NON_NEGATIVE),
    ("search.beam_ns", int_list(1, allow_empty=True)),
    ("search.mc_ns", int_list(1, allow_empty=True)),
    ("search.mc_bon", one_of(True, False)),
    ("search.beam_distinct", one_of("0", "1", "0,1", "1,0")),
    ("search.sweep_distinct", one_of(True, False)),
    ("search.logprob_bon", one_of("mean", "sum", "")),
    # Verifiers.
    ("verifier.design", one_of("lp_features", "head")),
    ("verifier.strong_sft_steps", NON_NEGATIVE),
    ("verifier.strong_learning_rate", number(0, lo_open=True)),
    ("verifier.backbone_lr_scale", number(0)),
    ("verifier.rank_weight", number(0)),
    ("verifier.rank_margin", number(0)),
    # Online RL.
    ("rl.init", one_of("rft", "sft")),
    ("rl.rft_steps", NON_NEGATIVE),
    ("rl.iterations", NON_NEGATIVE),
    ("rl.prompts_per_iter", POSITIVE),
    ("rl.seed", NON_NEGATIVE),
    ("rl.dense", one_of("advantage", "q")),
    ("rl.scorer", one_of("pav", "mc", "none")),
    ("rl.estimator", one_of("value", "rloo", "group_mean", "none")),
    ("rl.kl_coef", number(0)),
    ("rl.value_coef", number(0)),
    ("rl.*_lr", number(0, lo_open=True)),
    ("rl.max_prompt_len", POSITIVE),
    ("rl.mc_samples", POSITIVE),
    ("rl.eval_split", one_of("train", "validation", "test")),
    ("rl.eval_prompts", POSITIVE),
    ("rl.eval_samples", POSITIVE),
    ("rl.passn_max", NON_NEGATIVE),
    ("rl.passn_prompts", POSITIVE),
    ("rl.val_prompts", NON_NEGATIVE),
    # Generic training and evaluation knobs (any section, e.g. rl.*).
    ("*.batch_size", POSITIVE),
    ("*.steps", NON_NEGATIVE),
    ("*.ckpt_every", POSITIVE),
    ("*.log_every", POSITIVE),
    ("*.eval_every", NON_NEGATIVE),
    ("*.cache_size", POSITIVE),
    ("*.max_len", POSITIVE),
    ("*.max_new_tokens", POSITIVE),
    ("*.max_steps", POSITIVE),
    ("*.max_step_tokens", POSITIVE),
    ("*.num_prompts", POSITIVE),
    ("*.samples_per_prompt", POSITIVE),
    ("*.batch_rows", POSITIVE),
    ("*.prompts_per_chunk", POSITIVE),
    ("*.learning_rate", number(0, lo_open=True)),
    ("*.warmup_steps", NON_NEGATIVE),
    ("*.weight_decay", number(0)),
    ("*.grad_clip", number(0, lo_open=True)),
    ("*.n_mc", POSITIVE),
    ("*.n_cov", POSITIVE),
]


def _as_dict(config: Any) -> Mapping[str, Any]:
  if hasattr(config, "to_dict"):
    return config.to_dict()
  return config


def errors(config: Any,
           rules: list[tuple[str, Check]] | None = None) -> list[str]:
  """Every rule violation of `config` (ConfigDict or nested dict)."""
  rules = RULES if rules is None else rules
  out = []
  for key, value in identity.flatten(_as_dict(config)).items():
    for pattern, check in rules:
      if fnmatch.fnmatchcase(key, pattern):
        msg = check(key, value)
        if msg:
          out.append(msg)
        break
  return out


def validate(config: Any,
             rules: list[tuple[str, Check]] | None = None) -> None:
  """Raises ConfigError listing every invalid value, each by its key."""
  found = errors(config, rules)
  if found:
    raise ConfigError(
        "invalid config (fix these --config.<key>=... values):\n  "
        + "\n  ".join(found))
