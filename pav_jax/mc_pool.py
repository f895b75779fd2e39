"""Continuous-batching MC rollouts of many prefixes held by one seed state.

The labeller's per-step fork (`mc_values.continue_forked`) decodes n_mc
continuations of the prefixes of one step h in one batch that runs until its
longest row ends: on the demo config a third of the computed row-steps were
rows that had already stopped, and the 12 steps ran one after another. Here
every rollout of every prefix of a chunk is a job in one queue, decoded by a
pool of `width` rows in segments of `segment` tokens; after each segment the
rows whose rollout ended are refilled from the queue, so the batch rarely
waits for its longest row.

Rewinding. A prefix is (seed row, end position p): the seed's final KV
cache holds every token its row fed, each slot tagged with its absolute
position (kv_cache: -1 = empty; attention masks by these positions only).
Refilling a pool row gathers that seed row's slots of positions 0 .. p-1 in
order, sets `last_B` to the prefix's last token and `pos_B` to p: the state
a fork of the step-h seed state had (same tokens, positions and key), so the
continuation's tokens are the same (per-row randomness is fold_in(key,
position)).

The ring. The pool cache has one shared write index (kv_cache), advanced k
slots per segment and wrapped to 0 at the end. A row refilled at index t
gets its prefix at slots (t - p .. t - 1) mod S, so its continuation, written
from t on, never overwrites it as long as prefix + continuation <= S slots;
S = longest prompt - 1 + max_new_tokens + segment - 1, rounded up, since a
rollout is cut at the response budget: max_new_tokens minus the prefix's
response length (the grade reads (response + continuation)[:max_new_tokens],
so tokens past it never change a label). A row refilled later overwrites
every slot of its previous rollout.

The queue's order is the caller's (the labeller: prefix h ascending, so the
long rollouts of early prefixes start first); once it is empty and few rows
are left, they move to a narrower pool (`width // 4`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pav_jax import kv_cache
from pav_jax import mc_values
from pav_jax import sampler as sampler_lib

DEFAULT_WIDTH = 256
DEFAULT_SEGMENT = 4


def _round_up(x: int, m: int) -> int:
  return -(-int(x) // m) * m


def ring_size(max_prompt_len: int, max_new_tokens: int, segment: int) -> int:
  """Slots of the pool cache: the longest prefix plus its budget plus the
  tokens a segment may run past it, a multiple of 16 and of `segment`."""
  need = max_prompt_len - 1 + max_new_tokens + segment - 1
  return _round_up(need, int(np.lcm(16, segment)))


def _gather_prefix_rows(seed_cache, src_R, p_R, start, size):
  """Cache rows [R, ..., size] holding positions 0 .. p-1 of seed rows src_R
  at slots (start - p .. start - 1) mod size; every other slot empty."""
  pos_RS0 = seed_cache["pos"][src_R]
  s0 = pos_RS0.shape[1]
  big = jnp.iinfo(jnp.int32).max
  keep = (pos_RS0 >= 0) & (pos_RS0 < p_R[:, None])
  # Slots of positions 0, 1, ... in order (positions of a row are distinct).
  order_RS0 = jnp.argsort(jnp.where(keep, pos_RS0, big), axis=1)
  slot_S = jnp.arange(size, dtype=jnp.int32)
  c_RS = (slot_S[None, :] - (start - p_R)[:, None]) % size
  ok_RS = c_RS < p_R[:, None]
  src_RS = jnp.take_along_axis(order_RS0, jnp.minimum(c_RS, s0 - 1), axis=1)
  layers = {}
  for name, kv in seed_cache["layers"].items():
    layers[name] = {}
    for kk, buf in kv.items():
      # A gather of whole [H] vectors from the flattened buffer (an
      # element-wise take_along_axis was ~0.4 ms per row on the CPU).
      h = buf.shape[-1]
      k = 1 if buf.ndim == 3 else buf.shape[1]
      row_RK = src_R[:, None] * k + jnp.arange(k, dtype=src_R.dtype)[None]
      idx_RKS = row_RK[:, :, None] * s0 + src_RS[:, None, :]
      got = jnp.take(buf.reshape(-1, h), idx_RKS.reshape(-1), axis=0)
      got = got.reshape(idx_RKS.shape + (h,))
      got = jnp.where(ok_RS[:, None, :, None], got, jnp.zeros((), got.dtype))
      layers[name][kk] = got[:, 0] if buf.ndim == 3 else got
  return jnp.where(ok_RS, c_RS, -1).astype(jnp.int32), layers


@functools.partial(jax.jit, static_argnames=("mesh",), donate_argnums=(0,))
def _refill(pool, seed_cache, dst_R, src_R, p_R, last_R, key_R, active_B,
            start, mesh=None):
  """Pool rows dst_R (out of range: ignored) start the rollouts of prefixes
  (src_R, p_R, last_R) with keys key_R; finished_B = ~active_B."""
  size = pool.cache["pos"].shape[1]
  pos_RS, layers = _gather_prefix_rows(seed_cache, src_R, p_R, start, size)
  put = lambda buf, new: buf.at[dst_R].set(new, mode="drop")  # noqa: E731
  cache = {
      "pos": put(pool.cache["pos"], pos_RS),
      "index": jnp.asarray(start, jnp.int32),
      "layers": jax.tree.map(put, pool.cache["layers"], layers),
  }
  out = sampler_lib.SamplerState(
      cache=cache,
      last_B=put(pool.last_B, last_R.astype(jnp.int32)),
      pos_B=put(pool.pos_B, p_R.astype(jnp.int32)),
      finished_B=~active_B,
      key_B=put(pool.key_B, key_R),
  )
  return kv_cache.constrain(out, mesh)


def prefix_state(sampler, seed_state, src_A, p_A, last_A, key_A,
                 max_new_tokens: int) -> sampler_lib.SamplerState:
  """A state whose row a holds prefix (src_A[a], p_A[a]) of `seed_state`,
  ready to decode max_new_tokens (the per-step state of the old labeller:
  `continue_forked` can fork it). Rows: len(src_A)."""
  a = len(src_A)
  start = int(np.max(p_A))
  size = _round_up(start + max_new_tokens, 16)
  pool = _empty(sampler, seed_state, a, size, key_A[:1])
  return _refill(pool, seed_state.cache, jnp.arange(a, dtype=jnp.int32),
                 *_as_dev(src_A, p_A, last_A), key_A,
                 jnp.ones(a, bool), jnp.asarray(start, jnp.int32),
                 mesh=sampler.current_mesh())


def _as_dev(*xs):
  return tuple(jnp.asarray(np.asarray(x, np.int32)) for x in xs)


def _empty(sampler, seed_state, width: int, size: int, key1):
  mesh = sampler.current_mesh()
  dtype = seed_state.cache["layers"]["layer_0"]["k"].dtype
  cache = kv_cache.create(sampler.model_cfg, width, size, dtype=dtype,
                          mesh=mesh)
  return kv_cache.constrain(sampler_lib.SamplerState(
      cache=cache,
      last_B=jnp.zeros((width,), jnp.int32),
      pos_B=jnp.zeros((width,), jnp.int32),
      finished_B=jnp.ones((width,), bool),
      key_B=jnp.repeat(key1, width, axis=0),
  ), mesh)


def pooled_successes(sampler, params, seed_state, src_A, resp_A, prefix_A,
                     prompt_A, keys_AN, grade: mc_values.GradeFn,
                     max_new_tokens: int, budget: mc_values.Budget, *,
                     width: int | None = None,
                     segment: int | None = None) -> np.ndarray:
  """Successes of n continuations of each prefix (n = keys_AN.shape[1]).

  Args:
    sampler: the `sampler.Sampler` that decoded `seed_state`.
    params: the policy's params.
    seed_state: a state whose row src_A[a] fed every token of prefix a
      except its last (the seeds' state after their last step).
    src_A: int [A], the seed row of each prefix.
    resp_A: each prefix's response tokens (graded with the continuation).
    prefix_A: each prefix's full token list (prompt + response).
    prompt_A: each prefix's prompt index (passed to `grade`).
    keys_AN: [A, n] continuation keys (`mc_values.mc_keys` reshaped): the
      rollout of draw i of prefix a is the same as the one of
      `continue_forked` with key keys_AN[a, i].
    grade: grade(prompt index, response tokens) -> 0/1.
    max_new_tokens: the response budget.
    budget: sampled tokens (those up to the budget) and rollouts added.
    width: pool rows (rounded to the sampler's row multiple; default
      DEFAULT_WIDTH).
    segment: tokens decoded between refills (default DEFAULT_SEGMENT).

  Returns:
    int [A] successes out of n.
  """
  width = width or DEFAULT_WIDTH
  segment = segment or DEFAULT_SEGMENT
  a_n, n = keys_AN.shape[:2]
  if a_n == 0:
    return np.zeros(0, np.int32)
  mult = sampler.row_multiple()
  jobs = a_n * n
  width = _round_up(min(width, _round_up(jobs, 16)), mult)
  p_A = np.array([len(x) - 1 for x in prefix_A], np.int64)
  last_A = np.array([x[-1] for x in prefix_A], np.int64)
  cap_A = max_new_tokens - np.array([len(r) for r in resp_A], np.int64)
  if cap_A.min() < 1:
    raise ValueError("a prefix already reached the response budget")
  plen = int((p_A + 1 - (max_new_tokens - cap_A)).max())
  size = ring_size(plen, max_new_tokens, segment)
  keys = keys_AN.reshape((jobs,) + keys_AN.shape[2:])
  mesh = sampler.current_mesh()
  pool = _empty(sampler, seed_state, width, size, keys[:1])
  seed_cache = seed_state.cache
  eos = sampler.eos_id

  job_of = np.full(width, -1, np.int64)  # the job a row runs (-1: idle)
  got = np.zeros(width, np.int64)  # tokens the row's rollout has so far
  buf = np.zeros((width, _round_up(max_new_tokens, segment) + segment),
                 np.int32)
  succ = np.zeros(a_n, np.int32)
  nxt, start, to_grade = 0, 0, []
  buckets = sorted({max(width // d, mult) for d in (1, 2, 4, 8, 16)})

  def grade_all(items):
    for j, toks in items:
      a = j // n
      succ[a] += int(grade(int(prompt_A[a]), list(resp_A[a]) + toks) > 0)

  while True:
    idle = np.flatnonzero(job_of < 0)
    m = min(len(idle), jobs - nxt)
    if m:
      dst = idle[:m]
      job_of[dst] = np.arange(nxt, nxt + m)
      got[dst] = 0
      nxt += m
      r = next(b for b in buckets if b >= m)
      pad = r - m
      jb = np.concatenate([job_of[dst], np.full(pad, job_of[dst[0]])])
      a_r = jb // n
      pool = _refill(
          pool, seed_cache,
          jnp.asarray(np.concatenate([dst, np.full(pad, width)]).astype(
              np.int32)),
          *_as_dev(src_A[a_r], p_A[a_r], last_A[a_r]),
          keys[jnp.asarray(jb)], jnp.asarray(job_of >= 0),
          jnp.asarray(start, jnp.int32), mesh=mesh)
    elif (job_of >= 0).sum() == 0:
      break
    else:
      pool = pool.replace(
          finished_B=jnp.asarray(job_of < 0),
          cache=dict(pool.cache, index=jnp.asarray(start, jnp.int32)))
    live = np.flatnonzero(job_of >= 0)
    small = max(width // 4, mult)
    if nxt == jobs and len(live) <= small < width:
      # The queue is empty and few rows run: move them to a narrower pool.
      rows = np.concatenate([live, np.full(small - len(live), live[0])])
      pool = sampler_lib.select_rows(pool, jnp.asarray(rows.astype(np.int32)))
      pool = pool.replace(finished_B=jnp.asarray(
          np.arange(small) >= len(live)))
      job_of = np.concatenate([job_of[live], np.full(small - len(live), -1)])
      got = np.concatenate([got[live], np.zeros(small - len(live), np.int64)])
      buf = np.concatenate([buf[live], np.zeros(
          (small - len(live), buf.shape[1]), np.int32)])
      width = small
    out = sampler.decode(params, pool, segment)
    grade_all(to_grade)  # the host grades while the device decodes
    to_grade = []
    toks, lens, stops = jax.device_get((out.tokens_BN, out.length_B,
                                        out.stop_B))
    pool = out.state
    start = (start + segment) % size
    for w in np.flatnonzero(job_of >= 0):
      k = int(lens[w])
      buf[w, got[w]: got[w] + k] = toks[w, :k]
      got[w] += k
      a = job_of[w] // n
      cap = int(cap_A[a])
      if stops[w] == sampler_lib.EOS or got[w] >= cap:
        cont = buf[w, : got[w]].tolist()
        if got[w] <= cap and cont and cont[-1] == eos:
          cont = cont[:-1]
        budget.sampled_tokens += min(int(got[w]), cap)
        to_grade.append((int(job_of[w]), cont[:cap]))
        job_of[w] = -1
  grade_all(to_grade)
  budget.mc_rollouts += jobs
  return succ
