"""pav_jax's sampler against peers on one safetensors checkpoint (issue 14).

  pip install -e '.[bench]'         # google-tunix, transformers, torch
  python benchmarks/peers.py [--batches=16,64] [--repeats=7] [--peers=tunix,hf]

One Gemma-2-shaped model (vocab 512, d 256, 4 layers, 4 query heads, 1 KV
head, head_dim 64, MLP 1024, sliding window 64 on even layers, soft-caps
50/30, fp32, 3.94M params) gets random weights and is written ONCE as a
Hugging Face checkpoint (config.json + model.safetensors) by
`hf_gemma.save_model`. Every library then loads that same directory with
its own loader:

  * pav_jax: `hf_gemma.load_model` + `sampler.Sampler`;
  * Tunix (`google-tunix`): `models.gemma.params_safetensors` +
    `generate.sampler.Sampler` (prompts passed as strings of ids through a
    pass-through tokenizer; no BOS added; top_p 1 = plain categorical);
  * HF `transformers`: `Gemma2ForCausalLM.from_pretrained` + `generate`
    (eager attention, `do_sample`, top-k off, torch threads = JAX's cores).

Before timing, the logits of each peer on the same [2, 96] token batch must
equal pav_jax's (max |diff| < `--atol`), so the three run the same model.
Then, per batch size: prompt 64 random tokens, 128 new tokens, temperature
1, no early stop (no stop id can be sampled); a warm-up call each, then
`--repeats` rounds, each timing every library once in turn (interleaved,
so load on a shared machine hits all alike); the median wall time gives
tokens/s and the ratio pav_jax / peer. Prefill is included for all.
Missing optional packages are reported and skipped, not failed.
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from pav_jax import config as config_lib
from pav_jax import hf_gemma
from pav_jax import sampler as sampler_lib
from pav_jax import transformer

PROMPT_LEN = 64
NEW_TOKENS = 128
NO_STOP = -1  # no sampled id equals it


def model_config() -> config_lib.ModelConfig:
  """The Gemma-2-shaped 3.94M-parameter model of issue 14."""
  return config_lib.ModelConfig.tiny(vocab_size=512).replace(
      embed_dim=256, hidden_dim=1024, num_heads=4, num_kv_heads=1,
      head_dim=64, attn_logits_soft_cap=50.0, final_logit_soft_cap=30.0)


def write_checkpoint(path: str, cfg: config_lib.ModelConfig) -> None:
  """Random weights (embeddings and norms perturbed too) to `path` (HF)."""
  _, params = transformer.split(transformer.create(cfg, seed=0))
  keys = iter(jax.random.split(jax.random.key(1), 1000))

  def jitter(x):  # default norm scales are all zeros: make them count
    return x + 0.1 * jax.random.normal(next(keys), x.shape, x.dtype)

  hf_gemma.save_model(path, cfg, jax.tree.map(jitter, params),
                      dtype="float32")


# -----------------------------------------------------------------------------
# The three libraries behind one interface: logits(tokens) and
# generate(prompts) -> generated tokens.
# -----------------------------------------------------------------------------


class Pav:
  name = "pav_jax"

  def __init__(self, path: str):
    self.cfg, self.graphdef, self.params = hf_gemma.load_model(path)
    self.sampler = sampler_lib.Sampler(
        self.graphdef, self.cfg, cache_size=PROMPT_LEN + NEW_TOKENS,
        eos_id=NO_STOP, step_id=NO_STOP,
        sampling=sampler_lib.SamplingConfig(temperature=1.0),
        buckets=(PROMPT_LEN,))
    self.key = jax.random.key(0)

  def logits(self, tokens_BT: np.ndarray) -> np.ndarray:
    b, t = tokens_BT.shape
    pos_BT = np.broadcast_to(np.arange(t), (b, t))
    out, _ = transformer.forward(self.graphdef, self.params,
                                 jnp.asarray(tokens_BT), jnp.asarray(pos_BT),
                                 jnp.ones((b, t), bool))
    return np.asarray(out)

  def generate(self, prompts: list[list[int]]):
    out = self.sampler.generate(self.params, prompts, self.key, NEW_TOKENS)
    return jax.block_until_ready(out.tokens_BN)


class _IdTokenizer:
  """Tunix's tokenizer protocol over strings of space-separated ids."""

  def encode(self, text: str, **_) -> list[int]:
    return [int(t) for t in text.split()]

  def decode(self, ids, **_) -> str:
    return " ".join(str(int(i)) for i in ids)

  def bos_id(self) -> int:
    return 0  # falsy: Tunix then adds no BOS, prompts stay PROMPT_LEN long

  def eos_id(self) -> int:
    return NO_STOP

  def pad_id(self) -> int:
    return 0


class Tunix:
  name = "Tunix"

  def __init__(self, path: str, cfg: config_lib.ModelConfig):
    from tunix.generate import sampler as tx_sampler  # pylint: disable=g-import-not-at-top
    from tunix.models.gemma import model as tx_model  # pylint: disable=g-import-not-at-top
    from tunix.models.gemma import params_safetensors  # pylint: disable=g-import-not-at-top
    types = tuple(
        tx_model.AttentionType.LOCAL_SLIDING if cfg.is_local(i)
        else tx_model.AttentionType.GLOBAL for i in range(cfg.num_layers))
    tcfg = tx_model.ModelConfig(
        num_layers=cfg.num_layers, num_embed=cfg.vocab_size,
        embed_dim=cfg.embed_dim, hidden_dim=cfg.hidden_dim,
        num_heads=cfg.num_heads, head_dim=cfg.head_dim,
        num_kv_heads=cfg.num_kv_heads,
        final_logit_softcap=cfg.final_logit_soft_cap,
        use_post_attn_norm=True, use_post_ffw_norm=True,
        attention_types=types, attn_logits_soft_cap=cfg.attn_logits_soft_cap,
        sliding_window_size=cfg.sliding_window)
    self.model = params_safetensors.create_model_from_safe_tensors(
        path, tcfg, dtype=jnp.float32)
    self.sampler = tx_sampler.Sampler(
        self.model, _IdTokenizer(),
        tx_sampler.CacheConfig(cache_size=PROMPT_LEN + NEW_TOKENS,
                               num_layers=cfg.num_layers,
                               num_kv_heads=cfg.num_kv_heads,
                               head_dim=cfg.head_dim))

  def logits(self, tokens_BT: np.ndarray) -> np.ndarray:
    b, t = tokens_BT.shape
    pos_BT = jnp.broadcast_to(jnp.arange(t), (b, t))
    mask_BTT = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
    out, _ = self.model(jnp.asarray(tokens_BT), pos_BT, None, mask_BTT)
    return np.asarray(out)

  def generate(self, prompts: list[list[int]]):
    out = self.sampler(
        [" ".join(map(str, p)) for p in prompts],
        max_generation_steps=NEW_TOKENS, max_prompt_length=PROMPT_LEN,
        temperature=1.0, top_p=1.0, eos_tokens=[NO_STOP], seed=0)
    return out.tokens


class HF:
  name = "HF transformers"

  def __init__(self, path: str):
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(os.cpu_count() or 1)
    self.torch = torch
    self.model = transformers.Gemma2ForCausalLM.from_pretrained(
        path, torch_dtype=torch.float32, attn_implementation="eager").eval()

  def logits(self, tokens_BT: np.ndarray) -> np.ndarray:
    with self.torch.no_grad():
      out = self.model(self.torch.from_numpy(tokens_BT.astype(np.int64)))
    return out.logits.numpy()

  def generate(self, prompts: list[list[int]]):
    ids = self.torch.tensor(prompts, dtype=self.torch.int64)
    with self.torch.no_grad():
      return self.model.generate(
          ids, attention_mask=self.torch.ones_like(ids), do_sample=True,
          temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=NEW_TOKENS,
          min_new_tokens=NEW_TOKENS, pad_token_id=0)


# -----------------------------------------------------------------------------
# Driver.
# -----------------------------------------------------------------------------


def load_peers(names: list[str], path: str, cfg) -> list:
  makers: dict[str, Callable[[], object]] = {
      "tunix": lambda: Tunix(path, cfg), "hf": lambda: HF(path)}
  peers = []
  for name in names:
    try:
      peers.append(makers[name]())
    except ImportError as e:
      print(f"skipped {name}: {e} (pip install -e '.[bench]')")
  return peers


def check_logits(pav: Pav, peers: list, atol: float, rng) -> None:
  """Every peer's logits equal pav_jax's on one batch, or exit."""
  tokens = rng.integers(4, pav.cfg.vocab_size, (2, 96)).astype(np.int32)
  ref = pav.logits(tokens)
  for peer in peers:
    diff = float(np.max(np.abs(peer.logits(tokens) - ref)))
    print(f"logits {peer.name} vs pav_jax: max |diff| {diff:.2e} "
          f"(|logit| max {np.max(np.abs(ref)):.1f})")
    if not diff < atol:
      sys.exit(f"{peer.name} computes another model (max |diff| {diff:.3g} "
               f">= --atol {atol}): timings would not be comparable")


def time_interleaved(libs: list, prompts, repeats: int) -> dict[str, float]:
  """Median wall seconds of one generate call per library."""
  for lib in libs:
    lib.generate(prompts)  # warm-up: compile
  times = {lib.name: [] for lib in libs}
  for _ in range(repeats):
    for lib in libs:
      t0 = time.perf_counter()
      lib.generate(prompts)
      times[lib.name].append(time.perf_counter() - t0)
  return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", default="16,64")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--peers", default="tunix,hf")
  parser.add_argument("--atol", type=float, default=1e-3)
  args = parser.parse_args()
  batches = [int(b) for b in args.batches.split(",")]
  cfg = model_config()
  rng = np.random.default_rng(0)

  print(f"date:   {datetime.date.today()}  host: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} "
        f"cores  jax {jax.__version__} ({jax.default_backend()})")
  with tempfile.TemporaryDirectory() as path:
    write_checkpoint(path, cfg)
    pav = Pav(path)
    print(f"model:  {pav.cfg.num_params():,} params, vocab "
          f"{pav.cfg.vocab_size}, fp32, one safetensors file")
    peers = load_peers([p for p in args.peers.split(",") if p], path, cfg)
    check_logits(pav, peers, args.atol, rng)
    libs = [pav] + peers
    print(f"\nprompt {PROMPT_LEN}, {NEW_TOKENS} new tokens, temperature 1, no "
          f"stop; median of {args.repeats} interleaved calls after a warm-up "
          "(prefill included)\n")
    head = " | ".join(f"{lib.name} tok/s" for lib in libs)
    ratios = " | ".join(f"pav_jax / {p.name}" for p in peers)
    print(f"| batch | {head} | {ratios} |")
    print("|---:|" + "---:|" * (len(libs) + len(peers)))
    for b in batches:
      prompts = rng.integers(4, cfg.vocab_size, (b, PROMPT_LEN)).tolist()
      med = time_interleaved(libs, prompts, args.repeats)
      tps = {k: b * NEW_TOKENS / v for k, v in med.items()}
      cells = " | ".join(f"{tps[lib.name]:,.0f}" for lib in libs)
      rcells = " | ".join(f"{tps[pav.name] / tps[p.name]:.2f}x"
                          for p in peers)
      print(f"| {b} | {cells} | {rcells} |", flush=True)


if __name__ == "__main__":
  main()
