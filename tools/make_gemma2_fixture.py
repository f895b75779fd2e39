r"""Builds the tiny Gemma-2 parity fixture with Hugging Face transformers.

Writes a random-weight `Gemma2ForCausalLM` (4 layers, grouped-query
attention, both soft-caps switched on and biting, sliding window 8 on the
even layers, query_pre_attn_scalar != head_dim, N*H != D) in the HF
safetensors layout, plus the reference logits of HF's eager attention for a
few fixed token sequences longer than the window, and for a right-padded
batch. `tests/hf_gemma_test.py` checks pav_jax against these numbers without
importing torch or transformers.

Tool-only dependencies (the `tools` extra): torch (CPU build) and
transformers.

  .venv/bin/pip install torch==2.13.0 transformers
  .venv/bin/python tools/make_gemma2_fixture.py \
      --out=tests/fixtures/gemma2_tiny

Runs in a few seconds on a CPU; the fixture is about 0.6 MB.
"""

import json
import os
import shutil

from absl import app
from absl import flags
import numpy as np
import torch
import transformers

_OUT = flags.DEFINE_string(
    "out", "tests/fixtures/gemma2_tiny", "Output directory (replaced)."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the weights and tokens.")

# Fixture shape. Small enough to commit, large enough to exercise every
# Gemma-2 feature: T > window, K < N, N*H != D, query scalar != H.
_VOCAB = 256
_NUM_SEQS = 4
_SEQ_LEN = 24
_PAD_LENGTHS = (24, 17, 9, 5)
_PAD_ID = 0


def _hf_config() -> transformers.Gemma2Config:
  """The tiny config; rope given the way the installed version expects."""
  kwargs = {
      "vocab_size": _VOCAB,
      "hidden_size": 48,
      "intermediate_size": 96,
      "num_hidden_layers": 4,
      "num_attention_heads": 4,
      "num_key_value_heads": 2,
      "head_dim": 16,
      "query_pre_attn_scalar": 24,
      "hidden_activation": "gelu_pytorch_tanh",
      "attn_logit_softcapping": 5.0,
      "final_logit_softcapping": 8.0,
      "sliding_window": 8,
      "max_position_embeddings": 64,
      "rms_norm_eps": 1e-6,
      "tie_word_embeddings": True,
      "pad_token_id": _PAD_ID,
      "bos_token_id": 2,
      "eos_token_id": 1,
  }
  major = int(transformers.__version__.split(".")[0])
  if major >= 5:
    kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": 10_000.0}
  else:
    kwargs["rope_theta"] = 10_000.0
  return transformers.Gemma2Config(**kwargs)


def _eager_model(cfg: transformers.Gemma2Config) -> torch.nn.Module:
  """A Gemma2ForCausalLM on the eager attention path (the reference)."""
  model = transformers.Gemma2ForCausalLM(cfg).eval()
  # pylint: disable-next=protected-access
  model.config._attn_implementation = "eager"
  return model


def _randomize(model: torch.nn.Module, seed: int) -> None:
  """Weights large enough that both soft-caps and the (1 + w) norms matter."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        std = 0.3
      elif "embed_tokens" in name:
        std = 0.4
      elif name.endswith(("q_proj.weight", "k_proj.weight")):
        std = 2.0 * p.shape[1] ** -0.5
      else:
        std = p.shape[1] ** -0.5
      p.copy_(torch.randn(p.shape, generator=gen) * std)


def _logits(model, tokens: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
  with torch.no_grad():
    out = model(
        input_ids=torch.from_numpy(tokens).long(),
        attention_mask=None if mask is None else torch.from_numpy(mask).long(),
        use_cache=False,
    )
  return out.logits.float().numpy()


def main(argv):
  del argv
  torch.manual_seed(_SEED.value)
  cfg = _hf_config()
  model = _eager_model(cfg)
  _randomize(model, _SEED.value)

  rng = np.random.default_rng(_SEED.value)
  tokens = rng.integers(3, _VOCAB, (_NUM_SEQS, _SEQ_LEN)).astype(np.int32)
  logits = _logits(model, tokens, None)

  lengths = np.asarray(_PAD_LENGTHS)
  pad_valid = np.arange(_SEQ_LEN)[None, :] < lengths[:, None]
  pad_tokens = np.where(pad_valid, tokens[: len(lengths)], _PAD_ID)
  pad_tokens = pad_tokens.astype(np.int32)
  pad_logits = _logits(model, pad_tokens, pad_valid.astype(np.int32))
  pad_logits = np.where(pad_valid[..., None], pad_logits, 0.0)

  # Sanity: the window and the caps must actually change the numbers, or the
  # fixture would not test them.
  nowin = _eager_model(
      cfg.__class__(**{**cfg.to_dict(), "sliding_window": 4 * _SEQ_LEN}))
  nowin.load_state_dict(model.state_dict())
  window_effect = np.abs(_logits(nowin, tokens, None) - logits).max()
  cap = cfg.final_logit_softcapping
  print(f"max |logit| {np.abs(logits).max():.3f}, "
        f"{np.mean(np.abs(logits) > 0.5 * cap):.1%} above cap/2 "
        f"(final cap {cap}); window effect {window_effect:.3f}")
  assert window_effect > 1e-2, "sliding window has no effect on the fixture"
  assert np.abs(logits).max() > 0.5 * cap, "final soft-cap is not exercised"

  out = _OUT.value
  if os.path.exists(out):
    shutil.rmtree(out)
  model.save_pretrained(out, safe_serialization=True)
  gen_cfg = os.path.join(out, "generation_config.json")
  if os.path.exists(gen_cfg):
    os.remove(gen_cfg)
  np.savez_compressed(
      os.path.join(out, "reference_logits.npz"),
      tokens=tokens,
      logits=logits.astype(np.float32),
      pad_tokens=pad_tokens,
      pad_valid=pad_valid,
      pad_logits=pad_logits.astype(np.float32),
  )
  with open(os.path.join(out, "provenance.json"), "w") as f:
    json.dump(
        {
            "tool": "tools/make_gemma2_fixture.py",
            "seed": _SEED.value,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "attn_implementation": "eager",
            "window_effect_max_abs": float(window_effect),
        },
        f,
        indent=2,
    )
  total = sum(
      os.path.getsize(os.path.join(out, n)) for n in os.listdir(out)
  )
  print(f"wrote {out}: {sorted(os.listdir(out))}, {total / 1e6:.2f} MB")


if __name__ == "__main__":
  app.run(main)
