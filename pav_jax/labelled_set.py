"""The labelled set on disk: shards + manifest, resumable, validated.

A labelled set is a directory of `shard_XXXXX.npz` files (one per chunk of
prompts, written by `labelling.label_dataset`) plus `manifest.json` (format
version, identity, config, finished shards with sha256, counts and budget).
A rerun resumes at the first unfinished shard; a set made with another
tokenizer, step delimiter, policy or labelling settings is refused with
`LabelledSetError`. The prover's K is not part of the identity: the labels
are Q̂^pi (and Q̂^mu of a checkpoint prover); BoK advantages are computed
from them by the consumers (`advantages.prover_advantages`).

Arrays of a set (N rows = trajectories, P prefixes, T tokens): tokens_NT,
prompt_len_N, response_len_N, num_prefixes_N, outcome_N, finished_N,
prompt_index_N, q_NP, succ_NP, count_NP, mask_NP (+ q_mu_NP, succ_mu_NP;
+ seed_mask_NP, pit_N with `LabelConfig.first_pit`: mask_NP then stops at
each failing seed's first pit, seed_mask_NP keeps every real prefix);
layout as in `advantages` (q_NP[:, 0] = V(s_1)). count_NP is per prefix
(it varies with the adaptive budget and with pit probes).

A set whose budget records rollouts cut by a full KV cache
before the response budget (`budget.cache_full_biased` > 0, Q̂ biased) is
refused by `load_labelled` (sets made before that count was kept carry
only `cache_full`, every cache stop, and load as before).

Multi-host: every process computes the shards; only process 0 writes
(`is_writer`), and `sync` makes the others wait for it.
"""

import hashlib
import io
import json
import os
from pathlib import Path

import jax
from jax.experimental import multihost_utils
import numpy as np

from pav_jax import identity as identity_lib

FORMAT = "pav_jax.labelled_set"
FORMAT_VERSION = 1


class LabelledSetError(RuntimeError):
  """A labelled set that is corrupt or does not match the current run."""


def sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def tokenizer_sha256(tok) -> str:
  """Identity of a SentencePiece tokenizer: sha256 of its serialized model."""
  return sha256(tok._sp.serialized_model_proto())  # pylint: disable=protected-access


def tokenizer_identity(tok) -> dict:
  """The identity entries a consumer checks (`load_labelled(expect=...)`)."""
  return {"tokenizer_sha256": tokenizer_sha256(tok), "step_id": tok.step_id,
          "eos_id": tok.eos_id}


def identity(tok, *, policy_sha256: str, prover_sha256: str | None,
             task: str, seed: int) -> dict:
  """Identity of a set made on `task` by the policy whose params hash to
  `policy_sha256` (its content, not its path: a retrained policy is refused,
  a moved workdir is not), with a checkpoint prover's hash or None."""
  return dict(tokenizer_identity(tok), pad_id=tok.pad_id, bos_id=tok.bos_id,
              policy_sha256=policy_sha256,
              prover={"sha256": prover_sha256}, task=task, seed=seed)


def is_writer() -> bool:
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Barrier after process 0's writes (no-op on one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def atomic_write(path: Path, data: bytes) -> None:
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_manifest(directory: Path) -> dict | None:
  path = directory / "manifest.json"
  if not path.exists():
    return None
  try:
    m = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise LabelledSetError(f"{path} is not valid JSON ({e}): the labelled set "
                           "is corrupt; delete the directory to relabel") from e
  if m.get("format") != FORMAT or m.get("version") != FORMAT_VERSION:
    raise LabelledSetError(
        f"{path} has format {m.get('format')!r} v{m.get('version')}, expected "
        f"{FORMAT!r} v{FORMAT_VERSION}: relabel into a fresh directory")
  return m


def check_identity(path: Path, have: dict, want: dict,
                   defaults: dict | None = None) -> None:
  """Raises unless the entries of `want` equal the set's (`identity.diff`:
  a sub-key the set lacks takes its value from `defaults`, so a setting
  added later, at its default, keeps older sets valid)."""
  if isinstance(have.get("prover"), dict) and "bok_k" in have["prover"]:
    # Sets made before K left the identity: K does not change the labels.
    have = dict(have, prover={k: v for k, v in have["prover"].items()
                              if k != "bok_k"})
  diffs = identity_lib.diff({k: have.get(k) for k in want}, want,
                            defaults=defaults)
  if diffs:
    raise LabelledSetError(
        f"labelled set {path} does not match this run:\n  " + "\n  ".join(diffs)
        + "\nIt was made with another tokenizer / step delimiter / policy / "
        "prover or settings: use a fresh directory or delete this one.")


def open_manifest(directory: Path, identity_: dict, config: dict | None,
                  empty_budget: dict, defaults: dict | None = None) -> dict:
  """The manifest of `directory` (checked against `identity_`, see
  `check_identity` for `defaults`) or a new one."""
  manifest = read_manifest(directory)
  if manifest is None:
    return {"format": FORMAT, "version": FORMAT_VERSION,
            "identity": identity_, "config": config or {}, "shards": {},
            "budget": dict(empty_budget), "complete": False}
  check_identity(directory / "manifest.json", manifest["identity"], identity_,
                 defaults)
  return manifest


def shard_name(i: int) -> str:
  return f"shard_{i:05d}.npz"


def has_shard(directory: Path, manifest: dict, i: int) -> bool:
  name = shard_name(i)
  return name in manifest["shards"] and (directory / name).exists()


def add_shard(directory: Path, manifest: dict, i: int, arrays: dict,
              prompts: tuple[int, int], budget: dict,
              num_chunks: int) -> dict:
  """Records shard i in `manifest` (counts, budget); process 0 writes both.

  Budgets are dicts of numbers; the manifest's is their sum.
  """
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  data = buf.getvalue()
  name = shard_name(i)
  if is_writer():
    atomic_write(directory / name, data)
  shards = manifest["shards"]
  shards[name] = {
      "sha256": sha256(data), "prompts": list(prompts),
      "rows": int(len(arrays["tokens_NT"])),
      "prefixes": int(arrays["mask_NP"].sum()), "budget": budget}
  manifest["budget"] = {k: sum(s["budget"].get(k, 0)
                            for s in shards.values()) for k in budget}
  manifest["complete"] = len(shards) == num_chunks
  manifest["counts"] = {
      "prompts": sum(s["prompts"][1] - s["prompts"][0]
                     for s in shards.values()),
      "rollouts": sum(s["rows"] for s in shards.values()),
      "prefixes": sum(s["prefixes"] for s in shards.values())}
  if is_writer():
    atomic_write(directory / "manifest.json",
                 json.dumps(manifest, indent=2).encode())
  sync(f"labelled_set:{directory}:{name}")
  return manifest


def load_labelled(directory: str | Path, expect: dict | None = None) -> dict:
  """Loads a complete labelled set, checking format, identity and checksums.

  `expect` holds identity entries that must match (e.g. tokenizer_sha256,
  step_id). Returns the concatenated arrays (padded to common T) plus
  'manifest'.
  """
  directory = Path(directory)
  m = read_manifest(directory)
  if m is None:
    raise LabelledSetError(f"no labelled set at {directory} (manifest.json "
                           "missing): run the label stage first")
  if expect:
    check_identity(directory / "manifest.json", m["identity"], expect)
  if not m.get("complete"):
    raise LabelledSetError(
        f"labelled set {directory} is incomplete ({len(m['shards'])} "
        "shards): rerun labelling to finish it")
  cache_full = int(m.get("budget", {}).get("cache_full_biased", 0))
  if cache_full:
    raise LabelledSetError(
        f"labelled set {directory} has {cache_full} rollouts cut by a full KV "
        "cache before the response budget (budget.cache_full_biased): its Q̂ "
        "is biased. Raise `label.cache_size` and relabel into a fresh "
        "directory.")
  parts = []
  for name in sorted(m["shards"]):
    path = directory / name
    if not path.exists():
      raise LabelledSetError(f"shard {path} listed in the manifest is missing")
    data = path.read_bytes()
    if sha256(data) != m["shards"][name]["sha256"]:
      raise LabelledSetError(f"shard {path} is corrupt (sha256 mismatch): "
                             "delete it and rerun labelling to redo it")
    with np.load(io.BytesIO(data)) as z:
      parts.append({k: z[k] for k in z.files})
  t = max(p["tokens_NT"].shape[1] for p in parts)
  pad = m["identity"].get("pad_id", 0)
  out = {}
  for k in parts[0]:
    xs = [p[k] for p in parts]
    if k == "tokens_NT":
      xs = [np.pad(x, ((0, 0), (0, t - x.shape[1])), constant_values=pad)
            for x in xs]
    out[k] = np.concatenate(xs, axis=0)
  out["manifest"] = m
  return out
