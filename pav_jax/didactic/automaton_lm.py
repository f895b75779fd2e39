"""A sampler-compatible "LM" whose next-token law is a didactic prover.

The didactic planted-subsequence task (`env.py`) as a token LM: each env
action is a step "<symbol>\\n" (the env's EOS action is the real EOS, and
after `length` symbols the step ends with EOS). Its next-token law is
mu_gamma exactly and its automaton state lives in the KV cache, so the real
`Sampler`, `fork` and `select_rows` drive it unchanged, and every prefix's
Q has an exact value (`env.prover_values`): the labeller's tests and the
labelling experiments compare MC labels and first pits with it.

Token ids: PAD 0, BOS 1, EOS 2, STEP 4 ("\\n"), symbol a is SYM0 + a.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pav_jax import config as config_lib
from pav_jax import kv_cache
from pav_jax import transformer
from pav_jax.didactic import env as env_lib

PAD, BOS, EOS, STEP, SYM0 = 0, 1, 2, 4, 5


def automaton_lm(env: env_lib.Env, gamma: float):
  """(graphdef, params, model config) of the LM whose law is mu_gamma."""
  k_states, el = env.n_states, env.length
  delta = env_lib.transition_table(env)
  probs = env_lib.prover_probs(env, gamma)
  vocab = SYM0 + env.vocab - 1
  n_z = k_states * (el + 1) * 2
  def enc(k, h, w):
    return k + k_states * (h + (el + 1) * w)

  nxt = np.zeros((n_z, vocab), np.int32)
  logits = np.full((n_z, vocab), -1e9, np.float32)
  for k in range(k_states):
    for h in range(el + 1):
      for w in (0, 1):
        z = enc(k, h, w)
        nxt[z] = z
        nxt[z, STEP] = enc(k, h, 0)
        for a in range(env.vocab - 1):
          nxt[z, SYM0 + a] = enc(delta[k, a], min(h + 1, el), 1)
        if w:
          logits[z, EOS if h == el else STEP] = 0.0
        else:
          logits[z, SYM0:] = np.log(probs[k, :-1])
          logits[z, EOS] = np.log(probs[k, -1])

  class AutomatonLM(nnx.Module):
    NEXT, LOGITS = nxt, logits

    def __init__(self):
      self.dummy = nnx.Param(jnp.zeros((), jnp.float32))

    def __call__(self, tokens_BT, pos_BT, valid_BT, cache=None):
      b = tokens_BT.shape[0]
      nxt_ZV, logits_ZV = jnp.asarray(self.NEXT), jnp.asarray(self.LOGITS)
      z0_B = jnp.zeros((b,), jnp.int32)
      if cache is not None:
        pos_BS = cache["pos"]
        zs_BS = kv_cache.heads_major(cache["layers"]["layer_0"]["k"])[
            :, 0, :, 0].astype(jnp.int32)
        last_B = jnp.argmax(pos_BS, axis=1)
        last_z_B = jnp.take_along_axis(zs_BS, last_B[:, None], 1)[:, 0]
        z0_B = jnp.where(jnp.any(pos_BS >= 0, axis=1), last_z_B, 0)

      def body(z_B, xs):
        tok_B, ok_B = xs
        z_B = jnp.where(ok_B, nxt_ZV[z_B, tok_B], z_B)
        return z_B, z_B

      _, z_TB = jax.lax.scan(body, z0_B, (tokens_BT.T, valid_BT.T))
      z_BT = z_TB.T
      out_BTV = logits_ZV[z_BT] + 0.0 * self.dummy[...]
      if cache is None:
        return out_BTV, None
      index = cache["index"]
      kpos_BT = jnp.where(valid_BT, pos_BT, -1).astype(jnp.int32)
      zero = jnp.zeros((), jnp.int32)
      k_buf = cache["layers"]["layer_0"]["k"]
      hd = k_buf.shape[-1]
      upd_BTKH = jnp.broadcast_to(z_BT.astype(k_buf.dtype)[:, :, None, None],
                                  z_BT.shape + (1, hd))
      new = {
          "pos": jax.lax.dynamic_update_slice(cache["pos"], kpos_BT,
                                              (zero, index)),
          "index": index + tokens_BT.shape[1],
          "layers": {"layer_0": {
              "k": kv_cache.write(k_buf, upd_BTKH, index),
              "v": cache["layers"]["layer_0"]["v"]}},
      }
      return out_BTV, new

  cfg = config_lib.ModelConfig.tiny(vocab_size=vocab).replace(
      num_layers=1, num_heads=1, num_kv_heads=1, head_dim=2, embed_dim=2)
  graphdef, params = transformer.split(AutomatonLM())
  return graphdef, params, cfg


def env_symbols(env: env_lib.Env, resp) -> list[int]:
  """The env symbols of a response (step and EOS tokens dropped)."""
  return [t - SYM0 for t in resp if t >= SYM0]


def grade_env(env: env_lib.Env):
  """grade(prompt index, response) -> 1.0 iff y* appears contiguously."""
  target = list(env.target)

  def grade(i, resp):
    del i
    s = env_symbols(env, resp)
    return float(any(s[j:j + len(target)] == target for j in range(len(s))))

  return grade


def exact_q(env: env_lib.Env, arr: dict, gamma: float) -> np.ndarray:
  """Exact Q of every real prefix of a `label_chunk` result (NaN elsewhere).

  EOS-closed prefixes (count 0) hold the outcome; the others
  V(automaton state, remaining steps) of mu_gamma.
  """
  delta = env_lib.transition_table(env)
  v_KR = env_lib.prover_values(env, gamma).v_KR
  q = np.full(arr["q_NP"].shape, np.nan)
  mask = arr.get("seed_mask_NP", arr["mask_NP"])
  for r in range(len(q)):
    plen = int(arr["prompt_len_N"][r])
    resp = arr["tokens_NT"][r, plen:plen + arr["response_len_N"][r]].tolist()
    syms, k = env_symbols(env, resp), 0
    for h in range(int(mask[r].sum())):
      if h > 0 and h - 1 < len(syms):
        k = delta[k, syms[h - 1]]
      q[r, h] = (arr["outcome_N"][r] if arr["count_NP"][r, h] == 0
                 else v_KR[k, env.length - h])
  return q
