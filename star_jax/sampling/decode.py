"""The jitted parts of sampling: prefill a shared prefix once, prefill a left-padded batch of
prompts (each once, however many samples it has), then an early-exit decode loop, and the
gather that lets a batch whose most rows are done decode on as a smaller one.

All take the parameters as an argument (never closed over), so the trainer's freshly
updated arrays are used directly, and a prefix cache lives only as long as the call
that made it: it is never served with other weights. The loop carries a `DecodeState`
that the caller donates from call to call. Only the sampled tokens' log-probs are
kept, never a ``[B, L, V]`` logits buffer: each at the temperature it was drawn at (what an
off-policy ratio needs), the model's own (T = 1) for greedy decoding.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from star_jax.engine.kv_cache import Cache, cache_length, init_cache, map_cache
from star_jax.engine.params import merge
from star_jax.sampling.sampling_params import SamplingParams, logprob, pick_tokens


class DecodeState(NamedTuple):
  """Everything the decode loop carries (donated from step to step)."""
  cache: Cache  # a list of LayerCache, or a StackedCache (engine/kv_cache.py)
  kv_valid_BxS: jax.Array  # which cache slots hold real tokens
  last_token_B: jax.Array  # token to feed next
  position_B: jax.Array  # position of the token before it: [B], or [B, C] (a position scheme)
  slot: jax.Array  # cache slot it goes to (shared by all rows)
  step: jax.Array  # tokens generated so far
  done_B: jax.Array
  tokens_BxN: jax.Array
  logprobs_BxN: jax.Array
  lengths_B: jax.Array
  keys_B: jax.Array  # per-row PRNG keys
  temperature: jax.Array  # a runtime value: one compiled loop serves every T > 0


def record(state: DecodeState, logits_BxV, sp: SamplingParams, end_ids: tuple[int, ...],
           pad_id: int, stop_seqs: tuple[tuple[int, ...], ...] = ()) -> DecodeState:
  """Samples from the logits of ``state.step`` and appends to the outputs.

  A row is done after an end id, or once its newest tokens spell one of
  ``stop_seqs`` (multi-token stop sequences, matched on the device so a batch
  exits as soon as its last row stops, with no host round trip).
  """
  tok_B = pick_tokens(logits_BxV, state.keys_B, state.step, sp, state.temperature)
  tok_B = jnp.where(state.done_B, pad_id, tok_B)
  # The log-prob of the distribution the token was drawn from: the logits at the call's
  # temperature (greedy: the model's own, T = 1). Top-k / top-p cuts are not renormalised in.
  scaled_BxV = logits_BxV if sp.greedy else logits_BxV / state.temperature
  logp_B = jnp.where(state.done_B, 0.0, logprob(scaled_BxV, tok_B))
  tokens_BxN = jax.lax.dynamic_update_slice(state.tokens_BxN, tok_B[:, None], (0, state.step))
  logprobs_BxN = jax.lax.dynamic_update_slice(state.logprobs_BxN, logp_B[:, None],
                                              (0, state.step))
  lengths_B = state.lengths_B + (~state.done_B).astype(jnp.int32)
  done_B = state.done_B | jnp.isin(tok_B, jnp.asarray(end_ids, jnp.int32))
  for seq in stop_seqs:
    m = len(seq)
    window_BxM = jax.lax.dynamic_slice_in_dim(tokens_BxN, jnp.maximum(state.step - (m - 1), 0),
                                              m, axis=1)
    hit_B = jnp.all(window_BxM == jnp.asarray(seq, jnp.int32), axis=1) & (state.step >= m - 1)
    done_B = done_B | hit_B
  return state._replace(last_token_B=tok_B, tokens_BxN=tokens_BxN, logprobs_BxN=logprobs_BxN,
                        lengths_B=lengths_B, done_B=done_B, step=state.step + 1)


def row_keys(seed, prompt_idx_B, sample_idx_B) -> jax.Array:
  """Row (prompt i, sample j) draws from key(seed) -> fold_in(i) -> fold_in(j) -> fold_in(step)."""
  root = jax.random.key(seed)
  return jax.vmap(lambda i, j: jax.random.fold_in(jax.random.fold_in(root, i), j))(
      prompt_idx_B, sample_idx_B)


def prefill_prefix(graphdef, params, prefix_1xL: jax.Array) -> Cache:
  """Keys and values of a prefix every prompt of a call shares (the few-shot block), computed
  once: ``[1, K, L, H]`` per layer, at positions 0 .. L-1."""
  model = merge(graphdef, params)
  L = prefix_1xL.shape[1]
  positions_1xL = jnp.arange(L, dtype=jnp.int32)[None]
  mask_1xLxL = jnp.tril(jnp.ones((L, L), bool))[None]
  _, cache = model(prefix_1xL, positions_1xL, mask_1xLxL, init_cache(model.cfg, 1, L), 0)
  return cache


def prefill(graphdef, params, prefix_cache: Cache | None, prompt_QxP,
            prompt_mask_QxP, prompt_idx_B, sample_idx_B, seed, temperature, cache_len: int,
            max_new: int,
            sp: SamplingParams, end_ids: tuple[int, ...], pad_id: int,
            stop_seqs: tuple[tuple[int, ...], ...] = (), samples: int = 1) -> DecodeState:
  """Runs Q left-padded prompts through the model and samples token 0 of B = Q * samples rows.

  With ``prefix_cache`` (the keys/values of L shared prefix tokens) the prompts are the
  rest of each prompt: slots [0, L) hold the prefix, the prompts fill [L, L + P) at
  positions L, L + 1, ... as if the whole text had been prefilled. Each prompt is
  prefilled once; its ``samples`` rows (consecutive) then share its cache.
  """
  model = merge(graphdef, params)
  keys_B = row_keys(seed, prompt_idx_B, sample_idx_B)
  Q, prompt_len = prompt_QxP.shape
  L = cache_length(prefix_cache) if prefix_cache is not None else 0
  index_QxP = jnp.maximum(jnp.cumsum(prompt_mask_QxP, axis=-1) - 1, 0)
  positions = L + index_QxP  # [Q, P], or [Q, P, C] from a position scheme
  if model.cfg.positions is not None:  # counting starts at each row's first real token
    if L:
      raise ValueError("a shared prefix cannot be reused with a position scheme")
    first_QxP = (index_QxP == 0) & (prompt_mask_QxP > 0)  # (rows are left-padded)
    positions = model.cfg.positions.of_tokens(prompt_QxP, first_QxP)
  kv_valid_QxS = jnp.zeros((Q, cache_len), bool).at[:, L:L + prompt_len].set(
      prompt_mask_QxP.astype(bool))
  cache = init_cache(model.cfg, Q, cache_len)
  if L:
    kv_valid_QxS = kv_valid_QxS.at[:, :L].set(True)
    cache = map_cache(lambda c_QxKxSxH, p_1xKxLxH: c_QxKxSxH.at[:, :, :L].set(p_1xKxLxH[0]),
                      cache, prefix_cache)
  causal_PxS = jnp.arange(cache_len)[None, :] <= L + jnp.arange(prompt_len)[:, None]
  mask_QxPxS = causal_PxS[None] & kv_valid_QxS[:, None, :]
  h_QxPxD, cache = model(prompt_QxP, positions, mask_QxPxS, cache, L)
  logits_QxV = model.logits(h_QxPxD[:, -1:])[:, 0]
  last_position = positions[:, -1]
  if samples > 1:  # every sample row of a prompt starts from the prompt's one prefill
    rep = lambda x: jnp.repeat(x, samples, axis=0)
    cache = map_cache(rep, cache)
    kv_valid_QxS, logits_QxV, last_position = rep(kv_valid_QxS), rep(logits_QxV), rep(
        last_position)
  B = Q * samples
  state = DecodeState(
      cache=cache, kv_valid_BxS=kv_valid_QxS, last_token_B=jnp.zeros((B,), jnp.int32),
      position_B=last_position, slot=jnp.asarray(L + prompt_len, jnp.int32),
      step=jnp.asarray(0, jnp.int32), done_B=jnp.zeros((B,), bool),
      tokens_BxN=jnp.zeros((B, max_new), jnp.int32),
      logprobs_BxN=jnp.zeros((B, max_new), jnp.float32),
      lengths_B=jnp.zeros((B,), jnp.int32), keys_B=keys_B,
      temperature=jnp.asarray(temperature, jnp.float32))
  return record(state, logits_QxV, sp, end_ids, pad_id, stop_seqs)


def decode_step(model, state: DecodeState) -> tuple[jax.Array, DecodeState]:
  """Feeds ``state.last_token_B`` at ``state.slot``; returns next-token logits [B, V]."""
  kv_valid_BxS = jax.lax.dynamic_update_slice(
      state.kv_valid_BxS, jnp.ones((state.kv_valid_BxS.shape[0], 1), bool), (0, state.slot))
  if model.cfg.positions is not None:
    position_B = model.cfg.positions.advance(state.position_B, state.last_token_B)
  else:
    position_B = state.position_B + 1
  h_Bx1xD, cache = model(state.last_token_B[:, None], position_B[:, None],
                         kv_valid_BxS[:, None, :], state.cache, state.slot)
  state = state._replace(cache=cache, kv_valid_BxS=kv_valid_BxS, slot=state.slot + 1,
                         position_B=position_B)
  return model.logits(h_Bx1xD)[:, 0], state


def compact(state: DecodeState, rows_C: jax.Array, live_C: jax.Array) -> DecodeState:
  """Rows ``rows_C`` of a batch as a batch of C rows (C < B): a batch whose most rows are done
  decodes on with only the rows still going, each carrying its cache, outputs and PRNG key (so
  its tokens are the ones it would have drawn in the big batch). Rows where ``live_C`` is
  false only fill the batch up to C: they are marked done."""
  take = lambda x: jnp.take(x, rows_C, axis=0)
  rows = {f: take(getattr(state, f)) for f in DecodeState._fields
          if f not in ("cache", "slot", "step", "temperature")}
  rows["done_B"] = rows["done_B"] | ~live_C
  cache = map_cache(take, state.cache)
  return state._replace(cache=cache, **rows)


def decode(graphdef, params, state: DecodeState, stop_at, sp: SamplingParams,
           end_ids: tuple[int, ...], pad_id: int,
           stop_seqs: tuple[tuple[int, ...], ...] = ()) -> DecodeState:
  """Decodes until ``step == stop_at`` or every row is done (early exit)."""
  model = merge(graphdef, params)

  def cond(s: DecodeState):
    return (s.step < stop_at) & ~jnp.all(s.done_B)

  def body(s: DecodeState):
    logits_BxV, s = decode_step(model, s)
    return record(s, logits_BxV, sp, end_ids, pad_id, stop_seqs)

  return jax.lax.while_loop(cond, body, state)
