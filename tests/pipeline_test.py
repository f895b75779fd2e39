"""Tests for pav_jax.pipeline: stage identity on skip, stale stages."""

import json

import pytest

from pav_jax import defaults
from pav_jax import identity
from pav_jax import pipeline
from pav_jax import run_lib
from pav_jax import tasks


@pytest.fixture
def fake_stages(monkeypatch):
  """Stages that only record their calls and write their declared outputs."""
  calls = []

  def make(name):
    def fn(run):
      calls.append(name)
      for out in pipeline.STAGE_OUTPUTS.get(name, ()):
        (run.workdir / out).mkdir(parents=True, exist_ok=True)
      return {"ran": name}
    return fn

  monkeypatch.setattr(pipeline, "STAGES",
                      {n: make(n) for n in ("sft", "label", "verifiers")})

  class FakeRun:
    def __init__(self, workdir):
      self.workdir = workdir

  monkeypatch.setattr(run_lib, "make_run",
                      lambda config, workdir, mesh: FakeRun(workdir))
  monkeypatch.setattr(run_lib, "check_setup", lambda run, stages: None)
  monkeypatch.setattr(pipeline.report, "write",
                      lambda workdir, config, results: workdir / "report.md")
  return calls


def _config(**overrides):
  c = defaults.base_config()
  c.stages = "sft,label,verifiers"
  for key, value in overrides.items():
    section, name = key.split(".")
    c[section][name] = value
  return c


def test_finished_stages_are_skipped_and_record_their_identity(
    tmp_path, fake_stages):
  pipeline.run(_config(), tmp_path, mesh=None)
  assert fake_stages == ["sft", "label", "verifiers"]
  done = json.loads((tmp_path / "sft" / "DONE.json").read_text())
  assert done["identity"]["sft"]["steps"] == 1500
  # A rerun with a knob that does not change outputs skips everything.
  pipeline.run(_config(**{"sft.log_every": 7}), tmp_path, mesh=None)
  assert fake_stages == ["sft", "label", "verifiers"]


def test_changed_config_of_a_finished_stage_stops_naming_the_key(
    tmp_path, fake_stages):
  pipeline.run(_config(), tmp_path, mesh=None)
  with pytest.raises(identity.IdentityMismatchError, match=r"sft\.steps"):
    pipeline.run(_config(**{"sft.steps": 10}), tmp_path, mesh=None)
  # A verifier-only change leaves sft and label alone and names its key.
  with pytest.raises(identity.IdentityMismatchError,
                     match=r"verifier\.steps: 150 -> 3"):
    pipeline.run(_config(**{"verifier.steps": 3}), tmp_path, mesh=None)
  assert fake_stages == ["sft", "label", "verifiers"]


def test_stage_made_before_a_key_existed_is_skipped_at_its_default(
    tmp_path, fake_stages):
  pipeline.run(_config(), tmp_path, mesh=None)
  done_path = tmp_path / "label" / "DONE.json"
  done = json.loads(done_path.read_text())
  del done["identity"]["label"]["first_pit"]  # an older pav_jax's record
  done_path.write_text(json.dumps(done))
  pipeline.run(_config(), tmp_path, mesh=None)
  assert fake_stages == ["sft", "label", "verifiers"]  # skipped
  with pytest.raises(identity.IdentityMismatchError,
                     match=r'label\.first_pit: "off" -> "bisect"'):
    pipeline.run(_config(**{"label.first_pit": "bisect"}), tmp_path,
                 mesh=None)


def test_deleted_outputs_redo_the_stage_and_later_stages_are_stale(
    tmp_path, fake_stages):
  pipeline.run(_config(), tmp_path, mesh=None)
  (tmp_path / "sft" / "params").rmdir()
  with pytest.raises(RuntimeError, match="stale"):
    pipeline.run(_config(), tmp_path, mesh=None)
  assert fake_stages[-1] == "sft"  # redone; label refused, not mixed
  assert list((tmp_path / "sft").glob("DONE.stale-*.json"))


def test_reused_tokenizer_with_another_vocab_size_stops(tmp_path):
  task = tasks.get_task("arithmetic")
  c = defaults.base_config()
  c.task.num_train = 300
  run_lib.get_tokenizer(c, tmp_path, task)
  run_lib.get_tokenizer(c, tmp_path, task)  # same settings: reused
  c.tokenizer.vocab_size = 300
  with pytest.raises(identity.IdentityMismatchError,
                     match=r"vocab_size: 320 -> 300"):
    run_lib.get_tokenizer(c, tmp_path, task)
