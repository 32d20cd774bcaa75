"""Batched sampling with a KV cache: jitted prefill, then a jitted early-exit decode loop.

Prompts are left-padded to a power-of-two bucket so the batch shares one write
slot per step; positions come from the padding mask. Each row draws its random
numbers from ``(seed, prompt index, sample index, step)``, so results do not
depend on batch size or order. Only the sampled tokens' log-probs are kept —
never a ``[B, L, V]`` logits buffer.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from star_jax import positions as pos_lib
from star_jax import sharding
from star_jax.config import ModelConfig
from star_jax.distributed import to_host
from star_jax.model import LayerCache, init_cache
from star_jax.params import merge, shardings_of

MIN_PROMPT_BUCKET = 16
NEW_TOKENS_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How to pick the next token. ``temperature == 0`` is greedy (seed ignored)."""

  temperature: float = 0.0
  top_k: int = 0  # 0: no top-k cut
  top_p: float = 1.0  # 1: no nucleus cut

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0


class DecodeState(NamedTuple):
  """Everything the decode loop carries (donated from step to step)."""
  cache: list[LayerCache]
  kv_valid_BxS: jax.Array  # which cache slots hold real tokens
  last_token_B: jax.Array  # token to feed next
  position_B: jax.Array  # position of the token before it: [B], or [B, 3] (line, column, index)
  slot: jax.Array  # cache slot it goes to (shared by all rows)
  step: jax.Array  # tokens generated so far
  done_B: jax.Array
  tokens_BxN: jax.Array
  logprobs_BxN: jax.Array
  lengths_B: jax.Array
  keys_B: jax.Array  # per-row PRNG keys


@dataclasses.dataclass
class SampleOutput:
  """Per prompt and sample: ``tokens[p, i, :lengths[p, i]]`` (end token included)."""
  tokens: np.ndarray  # [num_prompts, n, max_new_tokens] int32, zero past the length
  lengths: np.ndarray  # [num_prompts, n]
  logprobs: np.ndarray  # [num_prompts, n, max_new_tokens] model log-prob of each token
  finished: np.ndarray  # [num_prompts, n] bool: stopped on an end token or stop string
  decode_steps: int  # decode-loop iterations run over all batches (after prefill)

  def sequences(self, prompt: int, sample: int = 0) -> list[int]:
    return self.tokens[prompt, sample, : self.lengths[prompt, sample]].tolist()


def pick_tokens(logits_BxV: jax.Array, keys_B: jax.Array, step: jax.Array,
                sp: SamplingParams) -> jax.Array:
  """Greedy, temperature, top-k and top-p selection, one key per row."""
  if sp.greedy:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  step_keys_B = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_B, step)
  logits_BxV = logits_BxV / sp.temperature
  if sp.top_k == 0 and sp.top_p == 1.0:
    return jax.vmap(jax.random.categorical)(step_keys_B, logits_BxV).astype(jnp.int32)
  k = sp.top_k or logits_BxV.shape[-1]
  vals_BxK, ids_BxK = jax.lax.top_k(logits_BxV, min(k, logits_BxV.shape[-1]))
  if sp.top_p < 1.0:
    probs_BxK = jax.nn.softmax(vals_BxK, axis=-1)
    before_BxK = jnp.cumsum(probs_BxK, axis=-1) - probs_BxK
    vals_BxK = jnp.where(before_BxK < sp.top_p, vals_BxK, -jnp.inf)  # keeps the top token
  choice_B = jax.vmap(jax.random.categorical)(step_keys_B, vals_BxK)
  return jnp.take_along_axis(ids_BxK, choice_B[:, None], axis=-1)[:, 0].astype(jnp.int32)


def _logprob(logits_BxV: jax.Array, tokens_B: jax.Array) -> jax.Array:
  logp_BxV = jax.nn.log_softmax(logits_BxV, axis=-1)
  return jnp.take_along_axis(logp_BxV, tokens_B[:, None], axis=-1)[:, 0]


def _record(state: DecodeState, logits_BxV, sp: SamplingParams, end_ids: tuple[int, ...],
            pad_id: int, stop_seqs: tuple[tuple[int, ...], ...] = ()) -> DecodeState:
  """Samples from the logits of ``state.step`` and appends to the outputs.

  A row is done after an end id, or once its newest tokens spell one of
  ``stop_seqs`` (multi-token stop sequences, matched on the device so a batch
  exits as soon as its last row stops, with no host round trip).
  """
  tok_B = pick_tokens(logits_BxV, state.keys_B, state.step, sp)
  tok_B = jnp.where(state.done_B, pad_id, tok_B)
  logp_B = jnp.where(state.done_B, 0.0, _logprob(logits_BxV, tok_B))
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


def prefill(graphdef, params, prompt_BxP, prompt_mask_BxP, prompt_idx_B, sample_idx_B, seed,
            cache_len: int, max_new: int, sp: SamplingParams, end_ids: tuple[int, ...],
            pad_id: int, stop_seqs: tuple[tuple[int, ...], ...] = ()) -> DecodeState:
  """Runs the prompt through the model, filling cache slots [0, P), and samples token 0."""
  model = merge(graphdef, params)
  keys_B = row_keys(seed, prompt_idx_B, sample_idx_B)
  B, P = prompt_BxP.shape
  positions_BxP = jnp.maximum(jnp.cumsum(prompt_mask_BxP, axis=-1) - 1, 0)
  if model.cfg.uses_lines:  # counting starts at each row's first real token (rows are left-padded)
    first_BxP = (positions_BxP == 0) & (prompt_mask_BxP > 0)
    positions_BxP = pos_lib.of_tokens(model.cfg, prompt_BxP, first_BxP)
  kv_valid_BxS = jnp.zeros((B, cache_len), bool).at[:, :P].set(prompt_mask_BxP.astype(bool))
  causal_PxS = jnp.arange(cache_len)[None, :] <= jnp.arange(P)[:, None]
  mask_BxPxS = causal_PxS[None] & kv_valid_BxS[:, None, :]
  cache = init_cache(model.cfg, B, cache_len)
  h_BxPxD, cache = model(prompt_BxP, positions_BxP, mask_BxPxS, cache, 0)
  logits_BxV = model.logits(h_BxPxD[:, -1:])[:, 0]
  state = DecodeState(
      cache=cache, kv_valid_BxS=kv_valid_BxS, last_token_B=jnp.zeros((B,), jnp.int32),
      position_B=positions_BxP[:, -1], slot=jnp.asarray(P, jnp.int32),
      step=jnp.asarray(0, jnp.int32), done_B=jnp.zeros((B,), bool),
      tokens_BxN=jnp.zeros((B, max_new), jnp.int32),
      logprobs_BxN=jnp.zeros((B, max_new), jnp.float32),
      lengths_B=jnp.zeros((B,), jnp.int32), keys_B=keys_B)
  return _record(state, logits_BxV, sp, end_ids, pad_id, stop_seqs)


def decode_step(model, state: DecodeState) -> tuple[jax.Array, DecodeState]:
  """Feeds ``state.last_token_B`` at ``state.slot``; returns next-token logits [B, V]."""
  kv_valid_BxS = jax.lax.dynamic_update_slice(
      state.kv_valid_BxS, jnp.ones((state.kv_valid_BxS.shape[0], 1), bool), (0, state.slot))
  if model.cfg.uses_lines:  # a line break opens a new line
    position_B = pos_lib.next_position(model.cfg, state.position_B, state.last_token_B)
  else:
    position_B = state.position_B + 1
  h_Bx1xD, cache = model(state.last_token_B[:, None], position_B[:, None],
                         kv_valid_BxS[:, None, :], state.cache, state.slot)
  state = state._replace(cache=cache, kv_valid_BxS=kv_valid_BxS, slot=state.slot + 1,
                         position_B=position_B)
  return model.logits(h_Bx1xD)[:, 0], state


def decode(graphdef, params, state: DecodeState, stop_at, sp: SamplingParams,
           end_ids: tuple[int, ...], pad_id: int,
           stop_seqs: tuple[tuple[int, ...], ...] = ()) -> DecodeState:
  """Decodes until ``step == stop_at`` or every row is done (early exit)."""
  model = merge(graphdef, params)

  def cond(s: DecodeState):
    return (s.step < stop_at) & ~jnp.all(s.done_B)

  def body(s: DecodeState):
    logits_BxV, s = decode_step(model, s)
    return _record(s, logits_BxV, sp, end_ids, pad_id, stop_seqs)

  return jax.lax.while_loop(cond, body, state)


def _bucket(n: int, minimum: int) -> int:
  return max(minimum, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


# Compiled prefill/decode pairs shared by all samplers of the same structure and layout.
_FNS: dict = {}


class Sampler:
  """Samples continuations from the decoder whose parameters the caller passes in.

  The sampler holds structure only (graphdef, config, mesh); ``params`` are an
  argument of every call, so the trainer's freshly updated arrays are used
  directly — there is no second copy of the weights.

  ``stop_sequences`` are token-id sequences that end a row on the device, like
  end ids spelled with several tokens (the row's length includes them): pass
  the encodings of the stop strings so batches need not wait for the host's
  stop-string check. Stop strings stay authoritative: a tokenizer may spell a
  stop string with other tokens, and the host check still catches those.
  """

  def __init__(self, cfg: ModelConfig, graphdef: nnx.GraphDef, mesh: Mesh,
               end_ids: Sequence[int] = (), pad_id: int = 0, batch_size: int = 32,
               stop_check_every: int = 32, stop_sequences: Sequence[Sequence[int]] = ()):
    self.cfg, self.graphdef, self.mesh = cfg, graphdef, mesh
    seqs = {tuple(int(i) for i in seq) for seq in stop_sequences}
    if () in seqs:
      raise ValueError("stop_sequences must not contain an empty sequence")
    self.end_ids = tuple(sorted(set(int(i) for i in end_ids) | {s[0] for s in seqs if len(s) == 1}))
    self.stop_seqs = tuple(sorted(s for s in seqs if len(s) > 1))
    self.pad_id = pad_id
    div = sharding.batch_divisor(mesh)
    self.batch_size = max(div, -(-batch_size // div) * div)  # a multiple of the batch shards
    self.stop_check_every = stop_check_every

  def _batch_sharding(self, shape) -> NamedSharding:
    return sharding.named(self.mesh, ("batch",) + (None,) * (len(shape) - 1), shape)

  def _state_shardings(self, B: int, S: int, N: int) -> DecodeState:
    cfg = self.cfg
    kv = (B, cfg.num_kv_heads, S, cfg.head_dim)
    kv_sharding = sharding.named(self.mesh, ("batch", "kv_heads", "seq", "head_dim"), kv)
    rep = sharding.replicated(self.mesh)
    return DecodeState(
        cache=[LayerCache(kv_sharding, kv_sharding) for _ in range(cfg.num_layers)],
        kv_valid_BxS=self._batch_sharding((B, S)), last_token_B=self._batch_sharding((B,)),
        position_B=self._batch_sharding((B, 3) if cfg.uses_lines else (B,)),
        slot=rep, step=rep,
        done_B=self._batch_sharding((B,)), tokens_BxN=self._batch_sharding((B, N)),
        logprobs_BxN=self._batch_sharding((B, N)), lengths_B=self._batch_sharding((B,)),
        keys_B=self._batch_sharding((B,)))

  def _compiled(self, params, B: int, P: int, S: int, N: int, sp: SamplingParams):
    p_shard = shardings_of(params)
    key = (self.graphdef, self.mesh, self.end_ids, self.stop_seqs, self.pad_id, B, P, S, N, sp,
           sharding.tree_key(p_shard))
    if key not in _FNS:
      st_shard = self._state_shardings(B, S, N)
      rep = sharding.replicated(self.mesh)
      static = dict(sp=sp, end_ids=self.end_ids, pad_id=self.pad_id, stop_seqs=self.stop_seqs)
      pre = jax.jit(
          functools.partial(prefill, self.graphdef, cache_len=S, max_new=N, **static),
          in_shardings=(p_shard, self._batch_sharding((B, P)), self._batch_sharding((B, P)),
                        self._batch_sharding((B,)), self._batch_sharding((B,)), rep),
          out_shardings=st_shard)
      dec = jax.jit(functools.partial(decode, self.graphdef, **static),
                    in_shardings=(p_shard, st_shard, rep), out_shardings=st_shard,
                    donate_argnums=(1,))
      _FNS[key] = (pre, dec)
    return _FNS[key]

  def sample(self, params, prompts: Sequence[Sequence[int]], max_new_tokens: int,
             sampling: SamplingParams = SamplingParams(), n: int = 1, seed: int = 0,
             stop_strings: Sequence[str] = (),
             decode_fn: Callable[[list[int]], str] | None = None,
             progress: Callable[[int], None] | None = None,
             first_index: int = 0) -> SampleOutput:
    """Samples ``n`` continuations of every prompt; returns all of them, in prompt order.

    ``stop_strings`` need ``decode_fn`` (token ids -> text); they are checked on
    the host every ``stop_check_every`` tokens and the row's length is cut at
    the first token whose text completes a stop string. ``progress(k)`` is
    called after each batch with the number of rows it held. Prompt ``i`` draws
    its random numbers as prompt ``first_index + i``, so a long list sampled in
    chunks gives the same samples as sampled at once.
    """
    if stop_strings and decode_fn is None:
      raise ValueError("stop_strings need decode_fn to turn token ids into text")
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    prompts = [list(map(int, p)) for p in prompts]
    for i, p in enumerate(prompts):
      if not p:
        raise ValueError(f"prompt {i} is empty")
      if len(p) + max_new_tokens > self.cfg.max_seq_len:
        raise ValueError(f"prompt {i} has {len(p)} tokens; with max_new_tokens={max_new_tokens} "
                         f"it exceeds the model's max_seq_len {self.cfg.max_seq_len}")
    num = len(prompts)
    N = -(-max_new_tokens // NEW_TOKENS_BUCKET) * NEW_TOKENS_BUCKET
    out = SampleOutput(tokens=np.zeros((num, n, N), np.int32), lengths=np.zeros((num, n), np.int32),
                       logprobs=np.zeros((num, n, N), np.float32),
                       finished=np.zeros((num, n), bool), decode_steps=0)
    # Rows sorted by prompt length keep each batch's padding bucket tight.
    rows = sorted(((i, j) for i in range(num) for j in range(n)), key=lambda r: len(prompts[r[0]]))
    B = self.batch_size
    offset = int(first_index)
    with jax.set_mesh(self.mesh):
      for start in range(0, len(rows), B):
        batch = rows[start:start + B]
        real = len(batch)
        batch = batch + [batch[0]] * (B - real)  # pad the remainder; padded rows are dropped
        self._sample_batch(params, prompts, batch, real, max_new_tokens, N, sampling, seed,
                           stop_strings, decode_fn, out, offset)
        if progress is not None:
          progress(real)
    out.tokens, out.logprobs = out.tokens[:, :, :max_new_tokens], out.logprobs[:, :, :max_new_tokens]
    return out

  def _sample_batch(self, params, prompts, batch, real, max_new_tokens, N, sp, seed,
                    stop_strings, decode_fn, out: SampleOutput, offset: int):
    longest = max(len(prompts[i]) for i, _ in batch)
    P = min(_bucket(longest, MIN_PROMPT_BUCKET), self.cfg.max_seq_len - N)
    P = max(P, longest)
    S = P + N
    prompt_BxP = np.full((len(batch), P), self.pad_id, np.int32)
    mask_BxP = np.zeros((len(batch), P), np.int32)
    for r, (i, _) in enumerate(batch):
      p = prompts[i]
      prompt_BxP[r, P - len(p):] = p
      mask_BxP[r, P - len(p):] = 1
    prompt_idx_B = np.asarray([offset + i for i, _ in batch], np.int32)
    sample_idx_B = np.asarray([j for _, j in batch], np.int32)
    pre, dec = self._compiled(params, len(batch), P, S, N, sp)
    put = lambda x: jax.device_put(x, self._batch_sharding(x.shape))  # host data -> global array
    state = pre(params, put(prompt_BxP), put(mask_BxP), put(prompt_idx_B), put(sample_idx_B),
                jax.device_put(np.int32(seed), sharding.replicated(self.mesh)))
    chunk = self.stop_check_every if stop_strings else max_new_tokens
    stop_len = np.full((len(batch),), -1)
    steps = 1
    while True:
      stop_at = min(max_new_tokens, steps + chunk) if stop_strings else max_new_tokens
      state = dec(params, state, jax.device_put(np.int32(stop_at), sharding.replicated(self.mesh)))
      steps = int(state.step)
      if not stop_strings:
        break
      done = to_host(state.done_B).copy()
      tokens = to_host(state.tokens_BxN)
      lengths = to_host(state.lengths_B)
      for r in range(real):
        if stop_len[r] < 0:
          cut = _stop_cut(tokens[r, :lengths[r]].tolist(), stop_strings, decode_fn)
          if cut is not None:
            stop_len[r], done[r] = cut, True
      if steps >= max_new_tokens or done[:real].all():
        break
      done[real:] = True
      state = state._replace(done_B=jax.device_put(done, state.done_B.sharding))
    out.decode_steps += steps - 1
    tokens, logprobs = to_host(state.tokens_BxN), to_host(state.logprobs_BxN)
    lengths, done = to_host(state.lengths_B), to_host(state.done_B)
    for r, (i, j) in enumerate(batch[:real]):
      length = int(stop_len[r]) if stop_len[r] >= 0 else int(lengths[r])
      out.tokens[i, j, :length] = tokens[r, :length]
      out.logprobs[i, j, :length] = logprobs[r, :length]
      out.lengths[i, j] = length
      out.finished[i, j] = bool(done[r]) or stop_len[r] >= 0


def _stop_cut(tokens: list[int], stop_strings, decode_fn) -> int | None:
  """Smallest prefix length whose text contains a stop string, or None."""
  if not any(s in decode_fn(tokens) for s in stop_strings):
    return None
  lo, hi = 1, len(tokens)  # binary search: text containment is monotone in the prefix
  while lo < hi:
    mid = (lo + hi) // 2
    if any(s in decode_fn(tokens[:mid]) for s in stop_strings):
      hi = mid
    else:
      lo = mid + 1
  return lo
