"""The stages side by side: run_lib, the import graph, c.pav, labelled_set."""

import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pav_jax import advantages
from pav_jax import defaults
from pav_jax import labelled_set
from pav_jax import pipeline
from pav_jax import run_lib
from pav_jax.search import comparison
from pav_jax.search import sweeps

PKG = pathlib.Path(__file__).resolve().parents[1] / "pav_jax"
STAGE_MODULES = {"pav_jax.train_policy", "pav_jax.labelling",
                 "pav_jax.train_verifier", "pav_jax.search",
                 "pav_jax.rl_stage"}


def _stage_of(module: str) -> str | None:
  for s in STAGE_MODULES:
    if module == s or module.startswith(s + "."):
      return s
  return None


def _imports(path: pathlib.Path) -> set[str]:
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      out.add(node.module)
      out |= {f"{node.module}.{a.name}" for a in node.names}
  return out


def test_no_stage_module_imports_another_stage():
  files = list(PKG.glob("*.py")) + list((PKG / "search").glob("*.py"))
  edges = []
  for f in files:
    rel = f.relative_to(PKG.parent).with_suffix("")
    me = _stage_of(".".join(rel.parts).removesuffix(".__init__"))
    if me is None:
      continue
    for m in _imports(f):
      other = _stage_of(m)
      if other is not None and other != me:
        edges.append((me, other))
  assert not edges, edges


def test_pipeline_calls_stage_functions_of_a_run():
  assert list(pipeline.STAGES) == ["sft", "label", "verifiers", "search",
                                   "rl"]
  for fn in pipeline.STAGES.values():
    assert callable(fn) and fn.__name__.startswith("run_")


def test_named_streams_keep_the_historical_offsets():
  assert run_lib.stream(0, "search") == 7
  assert run_lib.stream(3, "label_train") == 14
  assert run_lib.stream(3, "label_eval") == 16
  assert run_lib.stream(5, "policy_eval") == 6
  with pytest.raises(KeyError, match="unknown random stream"):
    run_lib.stream(0, "nope")
  a, b = run_lib.stream_key(0, "search"), jax.random.key(7)
  np.testing.assert_array_equal(jax.random.key_data(a), jax.random.key_data(b))


def test_pav_section_is_the_one_source_of_alpha_and_k():
  c = defaults.base_config()
  assert "alpha" not in c.search and "prover_k" not in c.search
  c.pav.alpha, c.pav.prover_k = 0.25, 8
  s = comparison.settings_from_config(c)
  assert (s.alpha, s.prover_k) == (0.25, 8.0)
  assert run_lib.pav_settings(c) == run_lib.Pav(alpha=0.25, prover_k=8.0)
  assert not sweeps.is_sweep(c)
  c.search.sweeps = "alpha"
  assert sweeps.is_sweep(c)


def test_pav_rewards_are_q_plus_alpha_bok_advantage():
  q_NP = jnp.array([[0.2, 0.5, 0.1, 1.0], [0.4, 0.6, 0.0, 0.0]])
  m_NP = jnp.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool)
  r = np.asarray(advantages.pav_rewards(q_NP, m_NP, alpha=0.5, prover_k=4))
  bq = 1 - (1 - np.asarray(q_NP)) ** 4
  want = np.asarray(q_NP).copy()
  want[:, 1:] += 0.5 * (bq[:, 1:] - bq[:, :-1])
  want = np.where(np.asarray(m_NP), want, 0.0)
  np.testing.assert_allclose(r, want, atol=1e-6)
  # The step layout gives the same advantages as the prefix layout.
  a_step = advantages.step_advantages(
      advantages.bok_q(q_NP[:, 1:], 4), advantages.bok_q(q_NP[:, 0], 4),
      m_NP[:, 1:])
  a_pref = advantages.prover_advantages(q_NP, m_NP, prover_k=4)
  np.testing.assert_allclose(a_pref[:, 1:], a_step, atol=1e-7)
  np.testing.assert_allclose(
      advantages.bok_step_advantage(q_NP[:, 1:], q_NP[:, :-1], 4),
      bq[:, 1:] - bq[:, :-1], atol=1e-6)


def test_chosen_alpha_prefers_the_smaller_on_ties():
  assert sweeps.chosen_alpha({0.0: [0.5, 0.5], 0.5: [0.4, 0.6],
                              1.0: [0.2, 0.2]}) == 0.0
  assert sweeps.chosen_alpha({0.0: [0.1], 0.25: [0.3], 0.5: [0.3]}) == 0.25


class _Tok:
  step_id, eos_id, pad_id, bos_id = 4, 2, 0, 1

  class _SP:
    def serialized_model_proto(self):
      return b"sp-model"

  _sp = _SP()


def _arrays(rows=2, p=3):
  return {"tokens_NT": np.ones((rows, 5), np.int32),
          "mask_NP": np.ones((rows, p), bool),
          "q_NP": np.full((rows, p), 0.5, np.float32)}


def test_labelled_set_identity_has_no_prover_k_and_old_sets_load(tmp_path):
  ident = labelled_set.identity(_Tok(), policy_sha256="aa",
                                prover_sha256=None, task="t", seed=0)
  assert "bok_k" not in str(ident)
  m = labelled_set.open_manifest(tmp_path, ident, None, {"seconds": 0.0})
  labelled_set.add_shard(tmp_path, m, 0, _arrays(), (0, 1),
                         {"seconds": 1.0}, num_chunks=1)
  data = labelled_set.load_labelled(
      tmp_path, expect=labelled_set.tokenizer_identity(_Tok()))
  assert data["q_NP"].shape == (2, 3) and data["manifest"]["complete"]
  # A set written when K was part of the identity still matches.
  old = dict(ident, prover={"bok_k": 4, "sha256": None})
  labelled_set.check_identity(tmp_path, old, ident)
  # Another policy (its content, not its path) is refused.
  with pytest.raises(labelled_set.LabelledSetError, match="policy_sha256"):
    labelled_set.check_identity(tmp_path, dict(old, policy_sha256="bb"),
                                ident)


def test_only_process_zero_writes_the_labelled_set(tmp_path, monkeypatch):
  monkeypatch.setattr(labelled_set, "is_writer", lambda: False)
  m = labelled_set.open_manifest(tmp_path, {"a": 1}, None, {"seconds": 0.0})
  m = labelled_set.add_shard(tmp_path, m, 0, _arrays(), (0, 1),
                             {"seconds": 1.0}, num_chunks=2)
  assert not list(tmp_path.iterdir())  # nothing written by process != 0
  assert m["counts"] == {"prompts": 1, "rollouts": 2, "prefixes": 6}
  assert not m["complete"]
