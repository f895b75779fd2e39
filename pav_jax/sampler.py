"""Static-shape KV-cache sampler that stops at step ends, resumes and forks.

One `Sampler` serves the policy and the prover. The flow is

  state = sampler.prefill(params, prompts, rng)        # jitted, per bucket
  out = sampler.decode(params, state, max_new_tokens=64, stop_at_step=True)
  out2 = sampler.decode(params, out.state, ...)         # resume: no prefill
  forked = sampler.fork(out.state, n=8)                 # n rows per row

The state holds the token that was sampled last but not yet fed to the model
(`last_B`), so resuming a row feeds exactly that token first; prefill feeds a
prompt minus its last token for the same reason. Per-row randomness is
`fold_in(key_B[b], position)`, so a row's samples depend only on its key and
its own positions: resumed == uninterrupted, forked == independent rows.

On a mesh (a `mesh=` constructor argument, or the one entered with
`jax.set_mesh`, e.g. by main.py) the rows of the tokens, keys and KV cache
are split over the batch axes ('data', 'fsdp') and the KV heads over
'tensor' (kv_cache.py); params are placed by the training rules
(`sharding.param_shardings`). Prefill and decode are jitted on inputs placed
with those shardings and constrain every output to them, as do `fork` and
`select_rows`, so each device decodes only its rows. A batch that the batch
axes do not divide is not padded: its rows are replicated (correct, every
device decodes every row). Callers that want the split pad their rows to a
multiple of `Sampler.row_multiple()`.
"""

import dataclasses
import functools
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from flax import nnx

from pav_jax import config as config_lib
from pav_jax import kv_cache
from pav_jax import sharding as sharding_lib
from pav_jax import steps
from pav_jax import transformer

# stop_B codes.
RUNNING, MAX_TOKENS, EOS, STEP_END, CACHE_FULL = 0, 1, 2, 3, 4
STOP_NAMES = ("running", "max_tokens", "eos", "step_end", "cache_full")

DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """Static (hashable) sampling parameters; temperature 0 means greedy."""

  temperature: float = 1.0
  top_k: int | None = None
  top_p: float | None = None


@flax.struct.dataclass
class SamplerState:
  cache: dict
  last_B: jax.Array  # int32, sampled (or last prompt) token not yet fed
  pos_B: jax.Array  # int32, position of last_B
  finished_B: jax.Array  # bool, emitted EOS: never decodes again
  key_B: jax.Array  # per-row PRNG keys


@flax.struct.dataclass
class DecodeOutput:
  tokens_BN: jax.Array  # int32, pad after a row stops
  logprobs_BN: jax.Array  # float32 log pi(token) at temperature 1, 0 on pad
  step_end_BN: jax.Array  # bool, token is the step delimiter
  length_B: jax.Array  # int32, tokens emitted by this call
  stop_B: jax.Array  # int32 stop code
  state: SamplerState


def sample_logits(
    logits_BV: jax.Array, key_B: jax.Array, cfg: SamplingConfig
) -> jax.Array:
  """Samples one token per row with temperature, top-k and top-p."""
  if cfg.temperature == 0.0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits_BV = logits_BV / cfg.temperature
  if cfg.top_k is not None:
    kth_B1 = jax.lax.top_k(logits_BV, cfg.top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
  if cfg.top_p is not None:
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    cum_BV = jnp.cumsum(jax.nn.softmax(sorted_BV, axis=-1), axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (at least one token).
    n_keep_B1 = jnp.sum(cum_BV - jax.nn.softmax(sorted_BV, axis=-1) < cfg.top_p,
                        axis=-1, keepdims=True)
    cutoff_B1 = jnp.take_along_axis(sorted_BV, n_keep_B1 - 1, axis=-1)
    logits_BV = jnp.where(logits_BV < cutoff_B1, -jnp.inf, logits_BV)
  return inverse_cdf_sample(jax.nn.softmax(logits_BV, axis=-1), key_B)


def inverse_cdf_sample(probs_BV: jax.Array, key_B: jax.Array) -> jax.Array:
  """One token per row from its probabilities, by inverting the CDF.

  Draws one uniform per row (Gumbel-max, as `jax.random.categorical`, draws
  V: on the CPU that was 7-9% of a decode step at V = 512 and grows with the
  vocabulary, 6.6x the cost of this at V = 4096). The token is the first
  whose cumulative probability exceeds u * total. Rounding in the cumulative
  sum could in principle land on a token of probability 0 (one masked by
  top-k / top-p); such a row takes its most likely token instead, so a
  masked token is never emitted.
  """
  cdf_BV = jnp.cumsum(probs_BV, axis=-1)
  u_B = jax.vmap(lambda k: jax.random.uniform(k, ()))(key_B)
  x_B1 = (u_B * cdf_BV[:, -1])[:, None]
  tok_B = jnp.minimum(jnp.sum(cdf_BV <= x_B1, axis=-1),
                      probs_BV.shape[-1] - 1).astype(jnp.int32)
  p_B = jnp.take_along_axis(probs_BV, tok_B[:, None], axis=-1)[:, 0]
  return jnp.where(p_B > 0, tok_B,
                   jnp.argmax(probs_BV, axis=-1).astype(jnp.int32))


def _prefill(graphdef, cfg, params, tokens_BT, length_B, key_B, cache_size,
             mesh=None):
  """Feeds tokens[:, :length-1]; the last prompt token is fed by decode."""
  b, t = tokens_BT.shape
  cache = kv_cache.create(cfg, b, cache_size, mesh=mesh)
  col_BT = jnp.arange(t, dtype=jnp.int32)[None, :]
  valid_BT = col_BT < (length_B - 1)[:, None]
  pos_BT = jnp.broadcast_to(col_BT, (b, t))
  _, cache = transformer.forward(graphdef, params, tokens_BT, pos_BT,
                                 valid_BT, cache)
  last_B = jnp.take_along_axis(tokens_BT, (length_B - 1)[:, None], axis=1)[:, 0]
  return kv_cache.constrain(SamplerState(
      cache=cache,
      last_B=last_B.astype(jnp.int32),
      pos_B=(length_B - 1).astype(jnp.int32),
      finished_B=jnp.zeros((b,), bool),
      key_B=key_B,
  ), mesh)


def _decode(
    graphdef, params, state: SamplerState, *, max_new_tokens: int,
    stop_at_step: bool, eos_id: int, step_id: steps.StepIds, pad_id: int,
    sampling: SamplingConfig, mesh=None,
):
  """lax.while_loop decode of up to max_new_tokens tokens per row.

  `step_id` is one id or a tuple (every piece holding the delimiter); a
  step ends at any of them.
  """
  b = state.last_B.shape[0]
  cache_size = state.cache["pos"].shape[1]
  n = max_new_tokens

  def cond(carry):
    i, st, done_B, *_ = carry
    return (i < n) & ~jnp.all(done_B) & (st.cache["index"] < cache_size)

  def body(carry):
    i, st, done_B, stop_B, tokens_BN, logprobs_BN, length_B = carry
    active_B = ~done_B
    logits_B1V, cache = transformer.forward(
        graphdef, params, st.last_B[:, None], st.pos_B[:, None],
        active_B[:, None], st.cache)
    logits_BV = logits_B1V[:, 0]
    key_B = jax.vmap(jax.random.fold_in)(st.key_B, st.pos_B + 1)
    tok_B = sample_logits(logits_BV, key_B, sampling)
    logp_B = jnp.take_along_axis(
        jax.nn.log_softmax(logits_BV, axis=-1), tok_B[:, None], axis=-1)[:, 0]
    tok_B = jnp.where(active_B, tok_B, pad_id)
    tokens_BN = tokens_BN.at[:, i].set(tok_B)
    logprobs_BN = logprobs_BN.at[:, i].set(jnp.where(active_B, logp_B, 0.0))
    is_eos_B = active_B & (tok_B == eos_id)
    is_step_B = active_B & steps.is_step_end(tok_B, step_id) & stop_at_step
    full_B = active_B & (i + 1 >= n)
    new_stop_B = jnp.select(
        [is_eos_B, is_step_B, full_B], [EOS, STEP_END, MAX_TOKENS], RUNNING)
    stop_B = jnp.where(active_B, new_stop_B, stop_B)
    st = SamplerState(
        cache=cache,
        last_B=jnp.where(active_B, tok_B, st.last_B),
        pos_B=st.pos_B + active_B.astype(jnp.int32),
        finished_B=st.finished_B | is_eos_B,
        key_B=st.key_B,
    )
    done_B = done_B | (stop_B != RUNNING)
    length_B = length_B + active_B.astype(jnp.int32)
    return i + 1, st, done_B, stop_B, tokens_BN, logprobs_BN, length_B

  done_B = state.finished_B
  stop_B = jnp.where(done_B, EOS, RUNNING).astype(jnp.int32)
  init = (
      jnp.zeros((), jnp.int32), state, done_B, stop_B,
      jnp.full((b, n), pad_id, jnp.int32), jnp.zeros((b, n), jnp.float32),
      jnp.zeros((b,), jnp.int32),
  )
  _, state, done_B, stop_B, tokens_BN, logprobs_BN, length_B = (
      jax.lax.while_loop(cond, body, init))
  stop_B = jnp.where(done_B, stop_B, CACHE_FULL)
  return kv_cache.constrain(DecodeOutput(
      tokens_BN=tokens_BN,
      logprobs_BN=logprobs_BN,
      step_end_BN=(steps.is_step_end(tokens_BN, step_id)
                   & (jnp.arange(n)[None, :] < length_B[:, None])),
      length_B=length_B,
      stop_B=stop_B,
      state=state,
  ), mesh)


def fork(state: SamplerState, n: int, key_B: jax.Array | None = None,
         mesh=None) -> SamplerState:
  """Replicates every row n times without recomputing its prefix.

  Row b becomes rows b*n .. b*n+n-1. Their keys are `key_B` when given
  (shape [B*n]), else fold_in(key of row b, j) for j < n. The result owns
  its buffers (decode donates it) and keeps the row sharding of the state
  (or of `mesh`).
  """
  forked = kv_cache.fork_rows(state, n, mesh)
  if key_B is None:
    j_B = jnp.arange(forked.last_B.shape[0], dtype=jnp.int32) % n
    key_B = jax.vmap(jax.random.fold_in)(forked.key_B, j_B)
  else:
    key_B = jnp.copy(key_B)  # decode donates the state: keep the caller's keys
  if not kv_cache.is_traced(key_B):
    mesh = kv_cache.mesh_of(forked, mesh)
  key_B = kv_cache.constrain(key_B, mesh)
  return forked.replace(key_B=key_B)


def select_rows(state: SamplerState, rows_R: jax.Array,
                mesh=None) -> SamplerState:
  """Gathers rows (e.g. the surviving beams) of a state; shapes follow rows_R.

  The result owns its buffers and keeps the row sharding (see `fork`).
  """
  return kv_cache.take_rows(state, rows_R, mesh)


class Sampler:
  """Host-side driver of the jitted prefill / decode functions.

  Compiles prefill once per (batch, bucket, cache size) and decode once per
  (batch, cache size, max_new_tokens, stop_at_step). `trace_counts` counts
  traces, for tests. `cache_size` is the default KV-cache size; prefill and
  generate take a per-call `cache_size=` so one sampler serves evaluation,
  labelling, search and RL. `mesh` (default: the mesh entered with
  `jax.set_mesh` at call time, if any) shards rows and KV heads; see the
  module docstring. `step_id` is one id or a tuple of ids (a tokenizer's
  `step_ids`: every piece holding the delimiter); decode stops at any of
  them. `step_ids` holds them all, `step_id` the first.
  """

  def __init__(
      self,
      graphdef,
      model_cfg: config_lib.ModelConfig,
      *,
      cache_size: int,
      eos_id: int,
      step_id: steps.StepIds,
      pad_id: int = 0,
      sampling: SamplingConfig = SamplingConfig(),
      buckets: Sequence[int] = DEFAULT_BUCKETS,
      mesh: jax.sharding.Mesh | None = None,
  ):
    self.graphdef = graphdef
    self.model_cfg = model_cfg
    self.cache_size = cache_size
    # step_ids: every id that ends a step; step_id: the first ("\n").
    self.step_ids = steps.as_ids(step_id)
    self.eos_id, self.step_id, self.pad_id = eos_id, self.step_ids[0], pad_id
    self.sampling = sampling
    self.buckets = tuple(sorted(buckets))
    self.mesh = mesh
    self.trace_counts = {"prefill": 0, "decode": 0}
    self._param_sh: dict = {}
    self._placed: tuple | None = None

    def counted(name, fn):
      def wrapped(*a, **kw):
        self.trace_counts[name] += 1
        return fn(*a, **kw)
      return wrapped

    self._prefill = jax.jit(
        counted("prefill", functools.partial(_prefill, graphdef, model_cfg)),
        static_argnames=("cache_size", "mesh"))
    self._decode = jax.jit(
        counted("decode", functools.partial(
            _decode, graphdef, eos_id=eos_id, step_id=self.step_ids,
            pad_id=pad_id, sampling=sampling)),
        static_argnames=("max_new_tokens", "stop_at_step", "mesh"),
        donate_argnums=(1,))

  # Sharding ------------------------------------------------------------------

  def current_mesh(self) -> jax.sharding.Mesh | None:
    """The mesh rows are split over (None: one device, no sharding)."""
    return sharding_lib.current_mesh(self.mesh)

  def row_multiple(self) -> int:
    """Row counts that are multiples of this are split over the devices."""
    mesh = self.current_mesh()
    return 1 if mesh is None else sharding_lib.batch_devices(mesh)

  def param_shardings(self, params, mesh) -> dict | None:
    """The training rules' shardings for the policy params (None: unknown
    structure, left as placed)."""
    if mesh not in self._param_sh:
      model = nnx.eval_shape(lambda: transformer.create(self.model_cfg))
      axes = sharding_lib.logical_axes(model)
      try:
        self._param_sh[mesh] = sharding_lib.param_shardings(axes, params, mesh)
      except (ValueError, TypeError, KeyError):
        self._param_sh[mesh] = None
    return self._param_sh[mesh]

  def place_params(self, params, mesh=None):
    """Params on the mesh by the training rules (no-op where they are)."""
    mesh = mesh or self.current_mesh()
    if mesh is None:
      return params
    if (self._placed is not None and self._placed[0] is params
        and self._placed[1] == mesh):
      return self._placed[2]
    sh = self.param_shardings(params, mesh)
    if sh is None:
      return params
    moved = [False]

    def put(x, s):
      if getattr(x, "sharding", None) == s:
        return x
      moved[0] = True
      return jax.device_put(x, s)

    placed = jax.tree.map(put, params, sh)
    # Remember a resharded copy so repeated calls with the same params do
    # not copy them again.
    self._placed = (params, mesh, placed) if moved[0] else None
    return placed

  # Sampling ------------------------------------------------------------------

  def bucket(self, length: int) -> int:
    for b in self.buckets:
      if b >= length:
        return b
    raise ValueError(
        f"prompt of {length} tokens is longer than the largest bucket "
        f"{self.buckets[-1]}: add a bucket or shorten the prompt")

  def pad_prompts(self, prompts: Sequence[Sequence[int]],
                  cache_size: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads token lists to one bucket length: (tokens, lengths)."""
    cache_size = cache_size or self.cache_size
    if not prompts:
      raise ValueError("no prompts given")
    lengths = np.array([len(p) for p in prompts], np.int32)
    if lengths.min() < 1:
      raise ValueError("every prompt needs at least one token (e.g. BOS)")
    t = self.bucket(int(lengths.max()))
    if t + 1 > cache_size:
      raise ValueError(
          f"prompt of {lengths.max()} tokens (bucket {t}) does not fit the "
          f"KV cache of {cache_size} slots: raise cache_size above "
          f"{t} plus the tokens to generate, or shorten the prompt")
    tokens = np.full((len(prompts), t), self.pad_id, np.int32)
    for i, p in enumerate(prompts):
      tokens[i, : len(p)] = p
    return tokens, lengths

  def prefill(self, params, prompts: Sequence[Sequence[int]], rng: jax.Array,
              key_B: jax.Array | None = None,
              cache_size: int | None = None) -> SamplerState:
    """Prefills a KV cache of `cache_size` (default: the sampler's) slots."""
    cache_size = cache_size or self.cache_size
    tokens, lengths = self.pad_prompts(prompts, cache_size)
    if key_B is None:
      key_B = jax.random.split(rng, len(prompts))
    mesh = self.current_mesh()
    rows = kv_cache.constrain(
        (jnp.asarray(tokens), jnp.asarray(lengths), key_B), mesh)
    return self._prefill(self.place_params(params, mesh), *rows,
                         cache_size=cache_size, mesh=mesh)

  def decode(self, params, state: SamplerState, max_new_tokens: int,
             stop_at_step: bool = False) -> DecodeOutput:
    """Decodes; the input state's buffers are donated (use out.state)."""
    mesh = self.current_mesh()
    return self._decode(self.place_params(params, mesh),
                        kv_cache.constrain(state, mesh),
                        max_new_tokens=max_new_tokens,
                        stop_at_step=stop_at_step, mesh=mesh)

  def generate(self, params, prompts, rng, max_new_tokens: int,
               stop_at_step: bool = False,
               cache_size: int | None = None) -> DecodeOutput:
    state = self.prefill(params, prompts, rng, cache_size=cache_size)
    return self.decode(params, state, max_new_tokens, stop_at_step)


def prefilled_tokens(prompts: Sequence[Sequence[int]]) -> int:
  """Prompt tokens whose keys/values a prefill computes (compute accounting)."""
  return int(sum(len(p) for p in prompts))
