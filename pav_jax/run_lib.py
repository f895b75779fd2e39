"""The run every stage shares: settings, task, tokenizer, model, samplers.

`pipeline.py` builds one `Run` per invocation (`make_run`) and hands it to
each stage function `run_<stage>(run) -> dict`. Stages never import one
another: they exchange only what they write in the workdir (policy params
under `sft/params`, labelled sets under `label/`, verifiers under
`verifiers/<name>/params`), read back through `Run.load_policy` /
`Run.load_verifier` and `labelled_set.load_labelled`.

Shape letters (one glossary for the pipeline; arrays carry them as suffixes):
  B  rows of a batch (prompts x samples, beams; "batch" in a jitted step)
  T  token positions of a row;  D  model width;  V  vocabulary
  S  KV-cache slots;  W  new tokens read per call;  L  response tokens
  N  stored trajectories (rows of a labelled set);  A  a subset of rows
  P  step-boundary prefixes s_1 .. s_{H+1} of a trajectory (index 0 = s_1)
  H  steps of a trajectory (step layout, column h - 1 = step h)
  E  problems (examples) of an evaluation or search
  K  samples per problem (best-of-N pools, pass@k);  G  groups of n among K
  M  candidates of a beam-search expansion (beams x expansions)
  R  beam rows (problems x beam size)
The prover's K is `prover_k` (Best-of-K(pi)), never a shape.

Random streams: every stage draws from a named stream of the run seed
(`stream(seed, name)`) instead of an ad-hoc `seed + 7`; the offsets are the
historical ones, so results are unchanged.
"""

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from pav_jax import config as config_lib
from pav_jax import defaults
from pav_jax import identity
from pav_jax import sampler as sampler_lib
from pav_jax import tasks as tasks_lib
from pav_jax import tokenizer as tok_lib
from pav_jax import train_lib
from pav_jax import transformer
from pav_jax import verifier as verifier_lib

# Named random streams: name -> offset from the run seed.
STREAMS = {
    "policy_eval": 1,  # SFT / RFT evaluation samples on the test prompts
    "rft_samples": 2,  # RFT: the policy's own samples
    "rft_prompts": 7,  # RFT: which train prompts
    "search": 7,  # test-time search (best-of-N samples, beams)
    "label_train": 11,  # train labelled set (prompts and rollouts)
    "label_eval": 13,  # held-out labelled set
    "rl": 17,  # RL rollouts (the RL state's key; + 1000 * c.rl.seed)
    "rl_prompts": 19,  # RL: the train prompt pool and its order
    "rl_eval": 23,  # RL: held-out evaluation samples (same for every arm)
}


def stream(seed: int, name: str) -> int:
  """The integer seed of a named random stream of run seed `seed`."""
  if name not in STREAMS:
    raise KeyError(f"unknown random stream {name!r}; known: {sorted(STREAMS)}")
  return seed + STREAMS[name]


def stream_key(seed: int, name: str) -> jax.Array:
  """`jax.random.key` of a named stream."""
  return jax.random.key(stream(seed, name))


@dataclasses.dataclass(frozen=True)
class Pav:
  """The PAV's knobs, read by every stage that needs them (`c.pav`).

  Attributes:
    alpha: weight of the prover advantage in Q^pi + alpha A^mu.
    prover_k: K of the Best-of-K(pi) prover (labels do not depend on it).
  """

  alpha: float = 0.5
  prover_k: float = 4.0


@dataclasses.dataclass(frozen=True)
class Run:
  """What every stage of one pipeline invocation shares (built once).

  Attributes:
    config: the full (locked) ConfigDict; stages read their own section.
    workdir: the run directory (stages write `<workdir>/<stage>/`).
    mesh: the device mesh.
    task: the task (examples, prompt, grade, steps).
    tok: the tokenizer (trained into the workdir on first use).
    model_cfg: the policy's (and verifiers' backbone) ModelConfig.
    pav: alpha and prover K.
  """

  config: ml_collections.ConfigDict
  workdir: Path
  mesh: Any
  task: Any
  tok: tok_lib.Tokenizer
  model_cfg: config_lib.ModelConfig
  pav: Pav

  @property
  def seed(self) -> int:
    return int(self.config.seed)

  def stage_dir(self, stage: str) -> Path:
    return self.workdir / stage

  def key(self, name: str) -> jax.Array:
    """PRNG key of a named stream of the run seed (see `STREAMS`)."""
    return stream_key(self.seed, name)

  def examples(self, split: str, num: int, stream_name: str | None = None):
    """`num` task examples of `split`; drawn with a named stream's seed."""
    seed = self.seed if stream_name is None else stream(self.seed, stream_name)
    return self.task.examples(split, num, seed=seed)

  def encode_prompts(self, examples) -> list[list[int]]:
    """BOS + prompt tokens (ending with the step delimiter) per example."""
    return [self.tok.encode(self.task.prompt(ex), bos=True) for ex in examples]

  def sampling(self) -> sampler_lib.SamplingConfig:
    s = self.config.sample
    return sampler_lib.SamplingConfig(
        temperature=s.temperature, top_k=s.top_k or None,
        top_p=s.top_p if s.top_p < 1.0 else None)

  def sampler(self, graphdef, cache_size: int | None = None
              ) -> sampler_lib.Sampler:
    """The policy sampler (`c.sample`), cache `cache_size` (default
    `c.sample.cache_size`)."""
    return sampler_lib.Sampler(
        graphdef, self.model_cfg,
        cache_size=cache_size or int(self.config.sample.cache_size),
        eos_id=self.tok.eos_id, step_id=self.tok.step_ids,
        pad_id=self.tok.pad_id, sampling=self.sampling())

  def load_params_dir(self, path: str | Path, make_model: Callable[[], Any]):
    """(graphdef, params) exported to `path`, restored sharded on the mesh."""
    return train_lib.load_model_params(Path(path), make_model, self.mesh)

  def load_policy(self, stage: str = "sft"):
    """(graphdef, params) of the policy exported by stage `stage`."""
    return self.load_params_dir(
        self.stage_dir(stage) / "params",
        lambda: transformer.create(self.model_cfg))

  def load_verifier(self, name: str):
    """(graphdef, params) of verifier `name` (orm, prm_q, ...) exported by
    the verifiers stage."""
    return self.load_params_dir(
        self.stage_dir("verifiers") / name / "params",
        lambda: verifier_lib.create(self.model_cfg, design=self._design()))

  def _design(self) -> str:
    """The verifier design of this run's `c.verifier.design`."""
    if self.config is None or "verifier" not in self.config:
      return verifier_lib.DEFAULT_DESIGN
    return self.config.verifier.design


def make_task(config):
  """The task named by `c.task` (with its knobs and data dir)."""
  knobs = dict(config.task.knobs)
  if config.task.data_dir:
    knobs["data_dir"] = config.task.data_dir
  return tasks_lib.get_task(config.task.name, **knobs)


def get_tokenizer(config, workdir: Path, task) -> tok_lib.Tokenizer:
  """The configured tokenizer, or one trained on the task's train corpus.

  A trained tokenizer records the settings it was trained with in
  `tokenizer.json` beside it; reusing it with another `tokenizer.vocab_size`
  stops (it would silently keep the old vocabulary).
  """
  if config.tokenizer.path:
    return tok_lib.Tokenizer.load(config.tokenizer.path)
  path = workdir / "tokenizer.model"
  sidecar = workdir / "tokenizer.json"
  want = {"vocab_size": int(config.tokenizer.vocab_size),
          "task": config.task.name}
  if path.exists():
    if sidecar.exists():
      identity.check(
          json.loads(sidecar.read_text()), want,
          what=f"the tokenizer trained in {path}",
          how_to_fix=("restore the old tokenizer settings, or use a new "
                      "--workdir (a new vocabulary invalidates every stage)"))
    return tok_lib.Tokenizer.load(path)
  exs = task.examples("train", min(config.task.num_train, 5000),
                      seed=config.seed)
  texts = [task.prompt(e) + e.solution for e in exs]
  workdir.mkdir(parents=True, exist_ok=True)
  tok = tok_lib.train_tokenizer(texts, workdir / "tokenizer",
                                config.tokenizer.vocab_size)
  train_lib.write_json_atomic(sidecar, want)
  return tok


def pav_settings(config) -> Pav:
  return Pav(alpha=float(config.pav.alpha), prover_k=float(config.pav.prover_k))


def make_run(config, workdir: str | Path, mesh) -> Run:
  """Builds the shared run: task, tokenizer (trained if needed), model."""
  workdir = Path(workdir)
  task = make_task(config)
  tok = get_tokenizer(config, workdir, task)
  model_cfg = defaults.model_config(config.model)
  tok.check_fits(model_cfg.vocab_size)
  return Run(config=config, workdir=workdir, mesh=mesh, task=task, tok=tok,
             model_cfg=model_cfg, pav=pav_settings(config))


def batch_fn(data: dict[str, np.ndarray], batch_size: int, seed: int):
  """Deterministic batches: step -> rows of a per-epoch permutation."""
  n = len(data["tokens"])
  if batch_size > n:
    raise ValueError(f"batch_size {batch_size} exceeds the {n} examples")
  per_epoch = n // batch_size

  def fn(step: int) -> dict[str, np.ndarray]:
    epoch, i = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    idx = perm[i * batch_size:(i + 1) * batch_size]
    return {k: v[idx] for k, v in data.items()}

  return fn


def _longest_bucket(run: Run, split: str, num: int, stream_name: str | None,
                    sampler: sampler_lib.Sampler) -> tuple[int, int]:
  """(longest prompt, its bucket) over the examples a stage will draw."""
  exs = run.examples(split, num, stream_name)
  longest = max(len(p) for p in run.encode_prompts(exs))
  return longest, sampler.bucket(longest)


def check_setup(run: Run, stages) -> None:
  """Fails at set-up, naming the key, when a stage would fail later: a split
  the stage reads is missing, or its prompts do not fit its KV cache (today
  that would surface only after the earlier stages ran for minutes)."""
  c = run.config
  probe = sampler_lib.Sampler(None, run.model_cfg, cache_size=1, eos_id=0,
                              step_id=0, pad_id=0)
  checks = []  # (what, split, num, stream, cache key, cache size, new tokens)
  if "sft" in stages:
    checks.append(("SFT evaluation", "test", c.eval.num_prompts, None,
                   "sample.cache_size", c.sample.cache_size,
                   c.sample.max_new_tokens))
    if c.sft.eval_every:
      checks.append(("SFT validation (sft.eval_every)", "validation",
                     c.eval.num_prompts, None, "sample.cache_size",
                     c.sample.cache_size, c.sample.max_new_tokens))
  if "label" in stages:
    for split, num, stream_name in (
        ("train", c.label.num_prompts, "label_train"),
        ("test", c.label.num_eval_prompts, "label_eval")):
      checks.append((f"labelling ({split})", split, num, stream_name,
                     "label.cache_size", c.label.cache_size,
                     c.label.max_step_tokens))
  for what, split, num, stream_name, key, size, new in checks:
    try:
      longest, bucket = _longest_bucket(run, split, num, stream_name, probe)
    except FileNotFoundError as e:
      raise ValueError(f"{what} needs the {split!r} split of task "
                       f"{c.task.name!r}: {e}") from e
    if bucket + new > size:
      raise ValueError(
          f"{what}: the longest prompt has {longest} tokens (bucket {bucket}) "
          f"and {new} new tokens must fit after it, but {key} = {size}: set "
          f"--config.{key}={bucket + new} or more")
