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
import math
from typing import Callable, NamedTuple, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from star_jax.engine import sharding
from star_jax.engine.decoder import LayerCache
from star_jax.engine.model_config import ModelConfig
from star_jax.engine.params import shardings_of
from star_jax.runtime.distributed import to_host
from star_jax.sampling.decode import DecodeState, decode, prefill
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

  def sequences(self, prompt: int, sample: int = 0) -> list[int]:
    return self.tokens[prompt, sample, : self.lengths[prompt, sample]].tolist()


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
        position_B=self._batch_sharding((B, cfg.positions.coords) if cfg.positions else (B,)),
        slot=rep, step=rep,
        done_B=self._batch_sharding((B,)), tokens_BxN=self._batch_sharding((B, N)),
        logprobs_BxN=self._batch_sharding((B, N)), lengths_B=self._batch_sharding((B,)),
        keys_B=self._batch_sharding((B,)))

  def _compiled(self, params, B: int, prompt_len: int, S: int, N: int, sp: SamplingParams):
    p_shard = shardings_of(params)
    key = (self.graphdef, self.mesh, self.end_ids, self.stop_seqs, self.pad_id, B, prompt_len, S,
           N, sp, sharding.tree_key(p_shard))
    if key not in _FNS:
      st_shard = self._state_shardings(B, S, N)
      rep = sharding.replicated(self.mesh)
      static = dict(sp=sp, end_ids=self.end_ids, pad_id=self.pad_id, stop_seqs=self.stop_seqs)
      pre = jax.jit(
          functools.partial(prefill, self.graphdef, cache_len=S, max_new=N, **static),
          in_shardings=(p_shard, self._batch_sharding((B, prompt_len)),
                        self._batch_sharding((B, prompt_len)),
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
    out.tokens = out.tokens[:, :, :max_new_tokens]
    out.logprobs = out.logprobs[:, :, :max_new_tokens]
    return out

  def _sample_batch(self, params, prompts, batch, real, max_new_tokens, N, sp, seed,
                    stop_strings, decode_fn, out: SampleOutput, offset: int):
    layout = self._layout(prompts, batch, N, offset)
    pre, dec = self._compiled(params, len(batch), layout.prompt_len, layout.prompt_len + N, N, sp)
    put = lambda x: jax.device_put(x, self._batch_sharding(x.shape))  # host data -> global array
    state = pre(params, put(layout.prompt_BxP), put(layout.mask_BxP), put(layout.prompt_idx_B),
                put(layout.sample_idx_B),
                jax.device_put(np.int32(seed), sharding.replicated(self.mesh)))
    state, stop_len = self._decode_until_stopped(params, dec, state, real, max_new_tokens,
                                                 stop_strings, decode_fn)
    out.decode_steps += int(state.step) - 1
    self._scatter(state, stop_len, batch[:real], out)

  def _layout(self, prompts, batch, N: int, offset: int) -> "_Layout":
    """Left-pads the batch's prompts to a power-of-two bucket: every row writes the same slot."""
    longest = max(len(prompts[i]) for i, _ in batch)
    prompt_len = max(min(_bucket(longest, MIN_PROMPT_BUCKET), self.cfg.max_seq_len - N), longest)
    prompt_BxP = np.full((len(batch), prompt_len), self.pad_id, np.int32)
    mask_BxP = np.zeros((len(batch), prompt_len), np.int32)
    for r, (i, _) in enumerate(batch):
      p = prompts[i]
      prompt_BxP[r, prompt_len - len(p):] = p
      mask_BxP[r, prompt_len - len(p):] = 1
    return _Layout(prompt_BxP, mask_BxP, np.asarray([offset + i for i, _ in batch], np.int32),
                   np.asarray([j for _, j in batch], np.int32), prompt_len)

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
  """One batch on the host, left-padded to ``prompt_len``."""
  prompt_BxP: np.ndarray
  mask_BxP: np.ndarray
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
