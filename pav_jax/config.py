"""Model configuration: one frozen dataclass for the Gemma-2 family.

The library never imports ml_collections; `configs/*.py` hold ConfigDicts and
`ModelConfig.from_dict` converts them at the boundary with key checking.
"""

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of a Gemma-2-style decoder.

  Attributes:
    vocab_size: V, rows of the tied embedding table.
    num_layers: L decoder blocks.
    embed_dim: D, residual width.
    hidden_dim: F, width of the gated-GELU MLP.
    num_heads: N query heads.
    num_kv_heads: K key/value heads (K == 1: multi-query; 1 < K < N: GQA).
    head_dim: H.
    query_pre_attn_scalar: queries are scaled by this ** -0.5 (None: H).
    attn_logits_soft_cap: tanh soft-cap of attention logits (None: off).
    final_logit_soft_cap: tanh soft-cap of output logits (None: off).
    sliding_window: window of the local layers (None: all layers global).
      Gemma 2 alternates local (even layers) and global (odd layers).
    rope_base: RoPE wavelength.
    norm_eps: RMSNorm epsilon.
    dtype: compute dtype of activations ("float32" or "bfloat16"). Params
      are always float32; logits, softmax and losses are float32.
    max_seq_len: longest sequence the model is meant for (cache upper bound).
    remat: recompute each block's activations in the backward pass
      (training memory ~ one block instead of all; ~30% more compute).
  """

  vocab_size: int
  num_layers: int
  embed_dim: int
  hidden_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  query_pre_attn_scalar: float | None = None
  attn_logits_soft_cap: float | None = 50.0
  final_logit_soft_cap: float | None = 30.0
  sliding_window: int | None = None
  rope_base: float = 10_000.0
  norm_eps: float = 1e-6
  dtype: str = "float32"
  max_seq_len: int = 8192
  remat: bool = False

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} must be a multiple of "
          f"num_kv_heads={self.num_kv_heads}"
      )
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(
          f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")

  @property
  def query_scale(self) -> float:
    scalar = self.query_pre_attn_scalar or self.head_dim
    return float(scalar) ** -0.5

  def is_local(self, layer: int) -> bool:
    """Gemma 2: even layers use the sliding window, odd layers are global."""
    return self.sliding_window is not None and layer % 2 == 0

  def num_params(self) -> int:
    """Exact parameter count (embedding counted once: it is tied)."""
    d, f = self.embed_dim, self.hidden_dim
    attn = d * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
    mlp = 3 * d * f
    norms = 4 * d
    return self.vocab_size * d + self.num_layers * (attn + mlp + norms) + d

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
    """Builds from a (ConfigDict-derived) dict; `preset` picks a base shape."""
    d = dict(d)
    preset = d.pop("preset", None)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(
          f"unknown model config key(s) {unknown}; valid keys: {sorted(names)}"
      )
    if preset:
      if preset not in PRESETS:
        raise ValueError(
            f"unknown model preset {preset!r}; one of {sorted(PRESETS)}")
      return PRESETS[preset]().replace(**d)
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.name not in d
    ]
    if missing:
      raise ValueError(f"model config is missing key(s) {missing}")
    return cls(**d)

  # Presets -----------------------------------------------------------------

  @classmethod
  def tiny(cls, vocab_size: int = 256) -> "ModelConfig":
    """CPU preset, ~0.9M parameters: every Gemma-2 feature switched on."""
    return cls(
        vocab_size=vocab_size,
        num_layers=4,
        embed_dim=128,
        hidden_dim=384,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        attn_logits_soft_cap=50.0,
        final_logit_soft_cap=30.0,
        sliding_window=64,
        max_seq_len=512,
    )

  @classmethod
  def small(cls, vocab_size: int = 256) -> "ModelConfig":
    """CPU preset, ~4.8M parameters (vocab 320): a verifier larger than
    `tiny` (issue 11); same Gemma-2 features."""
    return cls(
        vocab_size=vocab_size,
        num_layers=6,
        embed_dim=256,
        hidden_dim=768,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        attn_logits_soft_cap=50.0,
        final_logit_soft_cap=30.0,
        sliding_window=64,
        max_seq_len=512,
    )

  @classmethod
  def gemma2_2b(cls) -> "ModelConfig":
    return cls(
        vocab_size=256_000, num_layers=26, embed_dim=2304, hidden_dim=9216,
        num_heads=8, num_kv_heads=4, head_dim=256, query_pre_attn_scalar=256,
        sliding_window=4096, dtype="bfloat16",
    )

  @classmethod
  def gemma2_9b(cls) -> "ModelConfig":
    return cls(
        vocab_size=256_000, num_layers=42, embed_dim=3584, hidden_dim=14_336,
        num_heads=16, num_kv_heads=8, head_dim=256, query_pre_attn_scalar=256,
        sliding_window=4096, dtype="bfloat16",
    )

  @classmethod
  def gemma2_27b(cls) -> "ModelConfig":
    return cls(
        vocab_size=256_000, num_layers=46, embed_dim=4608, hidden_dim=36_864,
        num_heads=32, num_kv_heads=16, head_dim=128, query_pre_attn_scalar=144,
        sliding_window=4096, dtype="bfloat16",
    )


PRESETS = {
    "tiny": ModelConfig.tiny,
    "small": ModelConfig.small,
    "gemma2_2b": ModelConfig.gemma2_2b,
    "gemma2_9b": ModelConfig.gemma2_9b,
    "gemma2_27b": ModelConfig.gemma2_27b,
}
