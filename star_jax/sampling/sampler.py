"""The sampling front: prompts in, continuations out, in batches over the mesh.

Prompts are sorted by length, batched, and left-padded to a power-of-two bucket
so the batch shares one write slot per step (positions come from the padding
mask); each batch runs the jitted prefill and decode loop of decode.py,
compiled once per shape and layout. Each row draws its random numbers from
``(seed, prompt index, sample index, step)``, so results do not depend on batch
size or order. Stop strings are checked on the host between decode chunks.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from star_jax.engine import sharding
from star_jax.engine.decoder import LayerCache
from star_jax.engine.model_config import ModelConfig
from star_jax.engine.params import shardings_of
from star_jax.runtime.compiling import CompileOnFirstCall
from star_jax.runtime.distributed import to_host
from star_jax.sampling.decode import DecodeState, decode, prefill, prefill_prefix
from star_jax.sampling.methods import SamplingParams

MIN_PROMPT_BUCKET = 16
NEW_TOKENS_BUCKET = 16


@dataclasses.dataclass
class SampleOutput:
  """Per prompt and sample: ``tokens[p, i, :lengths[p, i]]`` (end token included)."""
  tokens: np.ndarray  # [num_prompts, n, max_new_tokens] int32, zero past the length
  lengths: np.ndarray  # [num_prompts, n]
  logprobs: np.ndarray  # [num_prompts, n, max_new_tokens] model log-prob of each token
  finished: np.ndarray  # [num_prompts, n] bool: stopped on an end token or stop string
  decode_steps: int  # decode-loop iterations run over all batches (after prefill)
  prefill_tokens: int  # token slots prefilled, padding included (the shared prefix once)

  def sequences(self, prompt: int, sample: int = 0) -> list[int]:
    return self.tokens[prompt, sample, : self.lengths[prompt, sample]].tolist()


def _bucket(n: int, minimum: int) -> int:
  """Prompt lengths are padded to a multiple of 16 up to 128, then of 64 (few compiled
  shapes, little padding: power-of-two buckets up to doubled the prefill work)."""
  n = max(n, minimum)
  step = 16 if n <= 128 else 64
  return -(-n // step) * step


def shared_prefix_len(prompts: Sequence[Sequence[int]]) -> int:
  """Length of the longest token prefix every prompt starts with, short of the shortest."""
  first, shortest = prompts[0], min(len(p) for p in prompts)
  n = 0
  while n < shortest - 1 and all(p[n] == first[n] for p in prompts):
    n += 1
  return n


# Compiled functions shared by all samplers of the same structure and layout.
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
               stop_check_every: int = 32, stop_sequences: Sequence[Sequence[int]] = (),
               prefix_reuse: bool = True, min_prefix: int = 32):
    self.cfg, self.graphdef, self.mesh = cfg, graphdef, mesh
    self.prefix_reuse, self.min_prefix = prefix_reuse, min_prefix
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

  def state_shardings(self, B: int, S: int, N: int) -> DecodeState:
    cfg = self.cfg
    kv = (B, cfg.num_kv_heads, S, cfg.head_dim)
    kv_sharding = sharding.named(self.mesh, ("batch", "kv_heads", "seq", "head_dim"), kv)
    rep = sharding.replicated(self.mesh)
    return DecodeState(
        cache=[LayerCache(kv_sharding, kv_sharding) for _ in range(cfg.num_layers)],
        kv_valid_BxS=self._batch_sharding((B, S)), last_token_B=self._batch_sharding((B,)),
        position_B=self._batch_sharding((B, cfg.positions.coords) if cfg.positions else (B,)),
        slot=rep, step=rep,
        done_B=self._batch_sharding((B,)), tokens_BxN=self._batch_sharding((B, N)),
        logprobs_BxN=self._batch_sharding((B, N)), lengths_B=self._batch_sharding((B,)),
        keys_B=self._batch_sharding((B,)))

  def _prefix_sharding(self, L: int) -> list[LayerCache]:
    kv = (1, self.cfg.num_kv_heads, L, self.cfg.head_dim)
    one = sharding.named(self.mesh, ("batch", "kv_heads", "seq", "head_dim"), kv)
    return [LayerCache(one, one) for _ in range(self.cfg.num_layers)]

  def jitted(self, p_shard, Q: int, samples: int, prefix: int, prompt_len: int, S: int, N: int,
             sp: SamplingParams):
    """The jitted (not yet compiled) prefill and decode loop for Q prompts x ``samples`` rows
    after a ``prefix``, a cache of S slots and N new tokens, parameters laid out as
    ``p_shard``."""
    B = Q * samples
    st_shard = self.state_shardings(B, S, N)
    rep = sharding.replicated(self.mesh)
    static = dict(sp=sp, end_ids=self.end_ids, pad_id=self.pad_id, stop_seqs=self.stop_seqs)
    pre = jax.jit(
        functools.partial(prefill, self.graphdef, cache_len=S, max_new=N, samples=samples,
                          **static),
        in_shardings=(p_shard, self._prefix_sharding(prefix) if prefix else None,
                      self._batch_sharding((Q, prompt_len)), self._batch_sharding((Q, prompt_len)),
                      self._batch_sharding((B,)), self._batch_sharding((B,)), rep),
        out_shardings=st_shard)
    dec = jax.jit(functools.partial(decode, self.graphdef, **static),
                  in_shardings=(p_shard, st_shard, rep), out_shardings=st_shard,
                  donate_argnums=(1,))
    return pre, dec

  def _compiled(self, params, Q: int, samples: int, prefix: int, prompt_len: int, S: int, N: int,
                sp: SamplingParams):
    """The (prefill, decode) pair for Q prompts x ``samples`` rows after a ``prefix``."""
    p_shard = shardings_of(params)
    key = (self.graphdef, self.mesh, self.end_ids, self.stop_seqs, self.pad_id, Q, samples,
           prefix, prompt_len, S, N, sp, sharding.tree_key(p_shard))
    if key not in _FNS:
      pre, dec = self.jitted(p_shard, Q, samples, prefix, prompt_len, S, N, sp)
      shape = f"{Q} prompts x {samples} of {prefix} + {prompt_len} tokens, {N} new"
      hint = "sample in smaller batches"
      _FNS[key] = (CompileOnFirstCall(pre, f"the sampler's prefill ({shape})", hint),
                   CompileOnFirstCall(dec, f"the sampler's decode loop ({shape})", hint))
    return _FNS[key]

  def _prefix_cache(self, params, prefix: list[int]) -> list[LayerCache]:
    p_shard = shardings_of(params)
    key = ("prefix", self.graphdef, self.mesh, len(prefix), sharding.tree_key(p_shard))
    if key not in _FNS:
      _FNS[key] = CompileOnFirstCall(
          jax.jit(functools.partial(prefill_prefix, self.graphdef),
                  in_shardings=(p_shard, sharding.replicated(self.mesh)),
                  out_shardings=self._prefix_sharding(len(prefix))),
          f"the sampler's shared-prefix prefill ({len(prefix)} tokens)")
    prefix_1xL = jax.device_put(np.asarray([prefix], np.int32), sharding.replicated(self.mesh))
    return _FNS[key](params, prefix_1xL)

  def sample(self, params, prompts: Sequence[Sequence[int]], max_new_tokens: int,
             sampling: SamplingParams = SamplingParams(), n: int = 1, seed: int = 0,
             stop_strings: Sequence[str] = (),
             decode_fn: Callable[[list[int]], str] | None = None,
             progress: Callable[[int], None] | None = None,
             first_index: int = 0) -> SampleOutput:
    """Samples ``n`` continuations of every prompt; returns all of them, in prompt order.

    Tokens every prompt starts with (a few-shot block of at least ``min_prefix``
    tokens) are prefilled once for the call, and each prompt once for its ``n``
    samples; the samples are the same as without (``prefix_reuse=False``).
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
    if n < 1:
      raise ValueError(f"n must be >= 1, got {n}")
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
                       finished=np.zeros((num, n), bool), decode_steps=0, prefill_tokens=0)
    prefix = self._reusable_prefix(prompts, N)
    # Prompts sorted by length keep each batch's padding tight; a batch holds whole prompts,
    # each with its n sample rows, so a prompt is prefilled once.
    order = sorted(range(num), key=lambda i: len(prompts[i]))
    Q = self.prompts_per_batch(n)
    offset = int(first_index)
    with jax.set_mesh(self.mesh):
      prefix_cache = self._prefix_cache(params, prefix) if prefix else None
      out.prefill_tokens += len(prefix)
      for start in range(0, num, Q):
        batch = order[start:start + Q]
        real = len(batch)
        batch = batch + [batch[0]] * (Q - real)  # pad the remainder; padded rows are dropped
        self._sample_batch(params, prefix_cache, len(prefix), prompts, batch, real, n,
                           max_new_tokens, N, sampling, seed, stop_strings, decode_fn, out, offset)
        if progress is not None:
          progress(real * n)
    out.tokens = out.tokens[:, :, :max_new_tokens]
    out.logprobs = out.logprobs[:, :, :max_new_tokens]
    return out

  def _reusable_prefix(self, prompts: list[list[int]], N: int) -> list[int]:
    """The prompts' shared prefix when it is worth prefilling once (else [])."""
    if not self.prefix_reuse or self.cfg.positions is not None or len(prompts) < 2:
      return []
    L = shared_prefix_len(prompts)
    return prompts[0][:L] if L >= self.min_prefix else []

  def prompts_per_batch(self, n: int) -> int:
    """Prompts per batch: ``batch_size`` rows of n samples each, a multiple of the batch shards."""
    div = sharding.batch_divisor(self.mesh)
    return max(div, -(-max(self.batch_size // n, 1) // div) * div)

  def _sample_batch(self, params, prefix_cache, prefix: int, prompts, batch, real, n,
                    max_new_tokens, N, sp, seed, stop_strings, decode_fn, out: SampleOutput,
                    offset: int):
    layout = self._layout(prompts, batch, prefix, n, N, offset)
    S = prefix + layout.prompt_len + N
    pre, dec = self._compiled(params, len(batch), n, prefix, layout.prompt_len, S, N, sp)
    put = lambda x: jax.device_put(x, self._batch_sharding(x.shape))  # host data -> global array
    state = pre(params, prefix_cache, put(layout.prompt_QxP), put(layout.mask_QxP),
                put(layout.prompt_idx_B), put(layout.sample_idx_B),
                jax.device_put(np.int32(seed), sharding.replicated(self.mesh)))
    out.prefill_tokens += layout.prompt_QxP.size
    state, stop_len = self._decode_until_stopped(params, dec, state, real * n, max_new_tokens,
                                                 stop_strings, decode_fn)
    out.decode_steps += int(state.step) - 1
    rows = [(i, j) for i in batch[:real] for j in range(n)]
    self._scatter(state, stop_len, rows, out)

  def padded_prompt_len(self, longest: int, N: int, prefix: int = 0) -> int:
    """The bucket a batch whose longest prompt (after the prefix) has ``longest`` tokens is
    left-padded to, short of the model's context less the N new tokens."""
    return max(min(_bucket(longest, MIN_PROMPT_BUCKET), self.cfg.max_seq_len - N - prefix),
               longest)

  def _layout(self, prompts, batch, prefix: int, n: int, N: int, offset: int) -> "_Layout":
    """Left-pads the batch's prompts (after the shared prefix) to a bucket: every row writes the
    same cache slot; rows are (prompt, sample), a prompt's samples consecutive."""
    rests = [prompts[i][prefix:] for i in batch]
    prompt_len = self.padded_prompt_len(max(len(r) for r in rests), N, prefix)
    prompt_QxP = np.full((len(batch), prompt_len), self.pad_id, np.int32)
    mask_QxP = np.zeros((len(batch), prompt_len), np.int32)
    for r, rest in enumerate(rests):
      prompt_QxP[r, prompt_len - len(rest):] = rest
      mask_QxP[r, prompt_len - len(rest):] = 1
    prompt_idx_B = np.repeat(np.asarray([offset + i for i in batch], np.int32), n)
    sample_idx_B = np.tile(np.arange(n, dtype=np.int32), len(batch))
    return _Layout(prompt_QxP, mask_QxP, prompt_idx_B, sample_idx_B, prompt_len)

  def _decode_until_stopped(self, params, dec, state: DecodeState, real: int,
                            max_new_tokens: int, stop_strings, decode_fn):
    """Runs the decode loop; with stop strings, in chunks between host-side stop checks.

    Returns the final state and, per row, the length cut at a stop string (-1: none).
    """
    rep = sharding.replicated(self.mesh)
    stop_len = np.full((len(state.lengths_B),), -1)
    if not stop_strings:
      return dec(params, state, jax.device_put(np.int32(max_new_tokens), rep)), stop_len
    steps = 1
    while True:
      stop_at = min(max_new_tokens, steps + self.stop_check_every)
      state = dec(params, state, jax.device_put(np.int32(stop_at), rep))
      steps = int(state.step)
      done = to_host(state.done_B).copy()
      tokens, lengths = to_host(state.tokens_BxN), to_host(state.lengths_B)
      for r in range(real):
        if stop_len[r] < 0:
          cut = _stop_cut(tokens[r, :lengths[r]].tolist(), stop_strings, decode_fn)
          if cut is not None:
            stop_len[r], done[r] = cut, True
      if steps >= max_new_tokens or done[:real].all():
        return state, stop_len
      done[real:] = True
      state = state._replace(done_B=jax.device_put(done, state.done_B.sharding))

  @staticmethod
  def _scatter(state: DecodeState, stop_len, rows, out: SampleOutput) -> None:
    """Copies the batch's real rows into their (prompt, sample) places of ``out``."""
    tokens, logprobs = to_host(state.tokens_BxN), to_host(state.logprobs_BxN)
    lengths, done = to_host(state.lengths_B), to_host(state.done_B)
    for r, (i, j) in enumerate(rows):
      length = int(stop_len[r]) if stop_len[r] >= 0 else int(lengths[r])
      out.tokens[i, j, :length] = tokens[r, :length]
      out.logprobs[i, j, :length] = logprobs[r, :length]
      out.lengths[i, j] = length
      out.finished[i, j] = bool(done[r]) or stop_len[r] >= 0


class _Layout(NamedTuple):
  """One batch on the host: Q prompts (after the shared prefix) left-padded to ``prompt_len``,
  and the prompt and sample index of each of its B = Q * n rows."""
  prompt_QxP: np.ndarray
  mask_QxP: np.ndarray
  prompt_idx_B: np.ndarray
  sample_idx_B: np.ndarray
  prompt_len: int


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
