"""The sampling front: prompts in, continuations out, in batches over the mesh.

Prompts are sorted by length, batched, and left-padded to a power-of-two bucket
so the batch shares one write slot per step (positions come from the padding
mask); each batch runs the jitted prefill and decode loop of decode.py,
compiled once per shape and layout. Each row draws its random numbers from
``(seed, prompt index, sample index, step)``, so results do not depend on batch
size or order. Stop strings are checked on the host between decode chunks, and a batch
whose rows are mostly done goes on as a smaller batch of the rows still going.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from star_jax.engine import sharding
from star_jax.engine.kv_cache import Cache, cache_shardings
from star_jax.engine.model_config import ModelConfig
from star_jax.engine.params import shardings_of
from star_jax.runtime.compiling import CompileOnFirstCall, program_cache
from star_jax.runtime.distributed import to_host
from star_jax.sampling.decode import DecodeState, compact, decode, prefill, prefill_prefix
from star_jax.sampling.sampling_params import SamplingParams
from star_jax.sampling.outputs import BatchRows, SampleOutput, stop_cut

MIN_PROMPT_BUCKET = 16
NEW_TOKENS_BUCKET = 16


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
_FNS: dict = program_cache("sampler")


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

  ``compact_rows``: between decode chunks, once at most half of a batch's rows are still
  going, they decode on as a batch of their own (a power of two of the batch shards): the
  steps of a long-tailed batch cost what its live rows cost. Samples are the same.

  ``layout``: "train" samples from the parameters as they lie (the trainer's FSDP layout:
  every decode step all-gathers each kernel); "tensor" reshards them for the call onto
  ``sharding.SAMPLING_RULES`` (tensor parallelism over the tensor x fsdp devices, rows over
  data), so no decode step gathers a weight. Samples are the same either way.
  """

  def __init__(self, cfg: ModelConfig, graphdef: nnx.GraphDef, mesh: Mesh,
               end_ids: Sequence[int] = (), pad_id: int = 0, batch_size: int = 32,
               stop_check_every: int = 16, stop_sequences: Sequence[Sequence[int]] = (),
               prefix_reuse: bool = True, min_prefix: int = 32, compact_rows: bool = True,
               layout: str = "train"):
    if layout not in sharding.LAYOUTS:
      raise ValueError(f"sampling layout must be one of {sorted(sharding.LAYOUTS)}, "
                       f"got {layout!r}")
    self.layout, self.rules = layout, sharding.LAYOUTS[layout]
    self.cfg, self.graphdef, self.mesh = cfg, graphdef, mesh
    self.compact_rows = compact_rows
    self.prefix_reuse, self.min_prefix = prefix_reuse, min_prefix
    seqs = {tuple(int(i) for i in seq) for seq in stop_sequences}
    if () in seqs:
      raise ValueError("stop_sequences must not contain an empty sequence")
    self.end_ids = tuple(sorted(set(int(i) for i in end_ids) | {s[0] for s in seqs if len(s) == 1}))
    self.stop_seqs = tuple(sorted(s for s in seqs if len(s) > 1))
    self.pad_id = pad_id
    div = sharding.batch_divisor(mesh, self.rules)
    self.batch_size = max(div, -(-batch_size // div) * div)  # a multiple of the batch shards
    self.stop_check_every = stop_check_every

  def _batch_sharding(self, shape) -> NamedSharding:
    return sharding.named(self.mesh, ("batch",) + (None,) * (len(shape) - 1), shape, self.rules)

  def state_shardings(self, B: int, S: int, N: int) -> DecodeState:
    cfg = self.cfg
    rep = sharding.replicated(self.mesh)
    return DecodeState(
        cache=cache_shardings(cfg, self.mesh, B, S, self.rules),
        kv_valid_BxS=self._batch_sharding((B, S)), last_token_B=self._batch_sharding((B,)),
        position_B=self._batch_sharding((B, cfg.positions.coords) if cfg.positions else (B,)),
        slot=rep, step=rep,
        done_B=self._batch_sharding((B,)), tokens_BxN=self._batch_sharding((B, N)),
        logprobs_BxN=self._batch_sharding((B, N)), lengths_B=self._batch_sharding((B,)),
        keys_B=self._batch_sharding((B,)), temperature=rep)

  def _prefix_sharding(self, L: int) -> Cache:
    return cache_shardings(self.cfg, self.mesh, 1, L, self.rules)

  def _scoped(self, fn):
    """``fn`` traced under this sampler's layout rules (the decoder's activation constraints)."""
    def run(*args, **kwargs):
      with sharding.rules_scope(self.rules):
        return fn(*args, **kwargs)
    return run

  def param_shardings(self, params):
    """Where ``params`` (arrays or abstract ones) lie for this sampler's layout."""
    if self.layout == "train":
      return shardings_of(params)
    return sharding.state_shardings(params, self.mesh, self.rules)

  def place(self, params):
    """``params`` on this sampler's layout (as they are for "train": no copy)."""
    if self.layout == "train":
      return params
    return jax.device_put(params, self.param_shardings(params))

  def jitted(self, p_shard, Q: int, samples: int, prefix: int, prompt_len: int, S: int, N: int,
             sp: SamplingParams):
    """The jitted (not yet compiled) prefill and decode loop for Q prompts x ``samples`` rows
    after a ``prefix``, a cache of S slots and N new tokens, parameters laid out as
    ``p_shard``."""
    B = Q * samples
    rep = sharding.replicated(self.mesh)
    pre = jax.jit(
        self._scoped(functools.partial(prefill, self.graphdef, cache_len=S, max_new=N,
                                       samples=samples, **self._static(sp))),
        in_shardings=(p_shard, self._prefix_sharding(prefix) if prefix else None,
                      self._batch_sharding((Q, prompt_len)), self._batch_sharding((Q, prompt_len)),
                      self._batch_sharding((B,)), self._batch_sharding((B,)), rep, rep),
        out_shardings=self.state_shardings(B, S, N))
    return pre, self._jitted_decode(p_shard, B, S, N, sp)

  def _jitted_decode(self, p_shard, B: int, S: int, N: int, sp: SamplingParams):
    st_shard = self.state_shardings(B, S, N)
    return jax.jit(self._scoped(functools.partial(decode, self.graphdef, **self._static(sp))),
                   in_shardings=(p_shard, st_shard, sharding.replicated(self.mesh)),
                   out_shardings=st_shard, donate_argnums=(1,))

  def _static(self, sp: SamplingParams) -> dict:
    return dict(sp=sp, end_ids=self.end_ids, pad_id=self.pad_id, stop_seqs=self.stop_seqs)

  def _compiled(self, params, Q: int, samples: int, prefix: int, prompt_len: int, S: int, N: int,
                sp: SamplingParams):
    """The prefill of Q prompts x ``samples`` rows after a ``prefix``."""
    sp = sp.compiled_part()
    p_shard = shardings_of(params)
    key = (self.graphdef, self.mesh, self.layout, self.end_ids, self.stop_seqs, self.pad_id, Q,
           samples, prefix, prompt_len, S, N, sp, sharding.tree_key(p_shard))
    if key not in _FNS:
      pre, _ = self.jitted(p_shard, Q, samples, prefix, prompt_len, S, N, sp)
      shape = f"{Q} prompts x {samples} of {prefix} + {prompt_len} tokens, {N} new"
      _FNS[key] = CompileOnFirstCall(pre, f"the sampler's prefill ({shape})",
                                     "sample in smaller batches")
    return _FNS[key]

  def _decoder(self, params, B: int, S: int, N: int, sp: SamplingParams):
    """The decode loop of B rows over S cache slots, N new tokens at most."""
    sp = sp.compiled_part()
    p_shard = shardings_of(params)
    key = ("decode", self.graphdef, self.mesh, self.layout, self.end_ids, self.stop_seqs,
           self.pad_id, B, S, N, sp, sharding.tree_key(p_shard))
    if key not in _FNS:
      _FNS[key] = CompileOnFirstCall(
          self._jitted_decode(p_shard, B, S, N, sp),
          f"the sampler's decode loop ({B} rows, {S} cache slots, {N} new)",
          "sample in smaller batches")
    return _FNS[key]

  def _compactor(self, B: int, C: int, S: int, N: int):
    """The gather of C of a batch's B rows into a batch of their own (decode.compact)."""
    key = ("compact", self.graphdef, self.mesh, self.layout, B, C, S, N)
    if key not in _FNS:
      _FNS[key] = jax.jit(self._scoped(compact), in_shardings=(
          self.state_shardings(B, S, N), self._batch_sharding((C,)), self._batch_sharding((C,))),
          out_shardings=self.state_shardings(C, S, N))
    return _FNS[key]

  def _prefix_cache(self, params, prefix: list[int]) -> Cache:
    p_shard = shardings_of(params)
    key = ("prefix", self.graphdef, self.mesh, self.layout, len(prefix),
           sharding.tree_key(p_shard))
    if key not in _FNS:
      _FNS[key] = CompileOnFirstCall(
          jax.jit(self._scoped(functools.partial(prefill_prefix, self.graphdef)),
                  in_shardings=(p_shard, sharding.replicated(self.mesh)),
                  out_shardings=self._prefix_sharding(len(prefix))),
          f"the sampler's shared-prefix prefill ({len(prefix)} tokens)")
    prefix_1xL = jax.device_put(np.asarray([prefix], np.int32), sharding.replicated(self.mesh))
    return _FNS[key](params, prefix_1xL)

  def sample(self, params, prompts: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int],
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

    ``max_new_tokens`` may be one limit per prompt: a row longer than its prompt's limit is
    cut there (not finished), and a batch ends once its rows are done or past their limits,
    so short limits spare a batch the steps of a row that would run on to the longest. A
    row's tokens up to its limit are the same as with one limit for all.
    """
    if stop_strings and decode_fn is None:
      raise ValueError("stop_strings need decode_fn to turn token ids into text")
    limits = np.asarray(max_new_tokens, np.int64)
    if limits.ndim > 1 or (limits.ndim == 1 and len(limits) != len(prompts)):
      raise ValueError(f"max_new_tokens: an int or one per prompt, got shape {limits.shape}")
    limits = np.broadcast_to(limits, (len(prompts),))
    if limits.size and limits.min() < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {limits.min()}")
    max_new_tokens = int(limits.max()) if limits.size else 1
    if n < 1:
      raise ValueError(f"n must be >= 1, got {n}")
    params = self.place(params)
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
                       finished=np.zeros((num, n), bool), decode_steps=0, decode_row_steps=0,
                       prefill_tokens=0)
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
                           limits, N, sampling, seed, stop_strings, decode_fn, out, offset)
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
    div = sharding.batch_divisor(self.mesh, self.rules)
    return max(div, -(-max(self.batch_size // n, 1) // div) * div)

  def _sample_batch(self, params, prefix_cache, prefix: int, prompts, batch, real, n,
                    limits: np.ndarray, N, sp, seed, stop_strings, decode_fn, out: SampleOutput,
                    offset: int):
    layout = self._layout(prompts, batch, prefix, n, N, offset)
    S = prefix + layout.prompt_len + N
    pre = self._compiled(params, len(batch), n, prefix, layout.prompt_len, S, N, sp)
    put = lambda x: jax.device_put(x, self._batch_sharding(x.shape))  # host data -> global array
    state = pre(params, prefix_cache, put(layout.prompt_QxP), put(layout.mask_QxP),
                put(layout.prompt_idx_B), put(layout.sample_idx_B),
                jax.device_put(np.int32(seed), sharding.replicated(self.mesh)),
                jax.device_put(np.float32(sp.temperature), sharding.replicated(self.mesh)))
    out.prefill_tokens += layout.prompt_QxP.size
    limit_R = np.repeat(limits[batch[:real]], n)  # each real row's limit
    rows, steps, row_steps = self._decode_until_stopped(params, state, limit_R, S, N, sp,
                                                        stop_strings, decode_fn)
    out.decode_steps += steps - 1
    out.decode_row_steps += row_steps
    rows.write(out, [(i, j) for i in batch[:real] for j in range(n)], limit_R)

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

  def _decode_until_stopped(self, params, state: DecodeState, limit_R: np.ndarray, S: int,
                            N: int, sp: SamplingParams, stop_strings, decode_fn
                            ) -> tuple["BatchRows", int, int]:
    """Decodes a batch until its first ``len(limit_R)`` rows are done or past their limits;
    returns their outputs (length cut at a stop string, -1: none), steps and row-steps.

    With stop strings or ``compact_rows`` it runs in chunks of ``stop_check_every`` steps;
    between chunks the host cuts rows at stop strings and, once at most half of the batch
    is still going, gathers the rows still going into a smaller batch (a long-tailed
    batch no longer pays its full width for its longest row).
    """
    rep = sharding.replicated(self.mesh)
    B, real, max_new_tokens = len(state.lengths_B), len(limit_R), int(limit_R.max())
    rows = BatchRows(np.zeros((B, N), np.int32), np.zeros((B, N), np.float32),
                     np.zeros((B,), np.int32), np.zeros((B,), bool), np.full((B,), -1))
    if not stop_strings and not self.compact_rows and (limit_R == max_new_tokens).all():
      stop_at = jax.device_put(np.int32(max_new_tokens), rep)
      state = self._decoder(params, B, S, N, sp)(params, state, stop_at)
      rows.put(state, np.arange(B))
      return rows, int(state.step), B * (int(state.step) - 1)
    where = np.where(np.arange(B) < real, np.arange(B), -1)  # each row's place in `rows`
    steps, row_steps = 1, 0
    while True:
      stop_at = min(max_new_tokens, steps + self.stop_check_every)
      state = self._decoder(params, len(where), S, N, sp)(params, state,
                                                          jax.device_put(np.int32(stop_at), rep))
      row_steps += len(where) * (int(state.step) - steps)
      steps = int(state.step)
      done = to_host(state.done_B).copy() | (where < 0)
      tokens, lengths = to_host(state.tokens_BxN), to_host(state.lengths_B)
      for r in np.flatnonzero(where >= 0) if stop_strings else ():
        if rows.stop_len[where[r]] < 0:
          cut = stop_cut(tokens[r, :lengths[r]].tolist(), stop_strings, decode_fn)
          if cut is not None:
            rows.stop_len[where[r]], done[r] = cut, True
      live = where >= 0  # a row past its limit is done: its text there decides it
      done[live] |= lengths[live] > limit_R[where[live]]
      if steps >= max_new_tokens or done.all():
        rows.put(state, where, done, tokens, lengths)
        return rows, steps, row_steps
      state = state._replace(done_B=jax.device_put(done, state.done_B.sharding))
      going = np.flatnonzero(~done)
      C = self._compact_size(len(going), len(where)) if self.compact_rows else None
      if C is not None:
        rows.put(state, where, done, tokens, lengths)  # final for the rows left behind
        pick = np.concatenate([going, np.full(C - len(going), going[0])])
        state = self._compactor(len(where), C, S, N)(
            state, jax.device_put(pick.astype(np.int32), self._batch_sharding((C,))),
            jax.device_put(np.arange(C) < len(going), self._batch_sharding((C,))))
        where = np.where(np.arange(C) < len(going), where[pick], -1)

  def _compact_size(self, going: int, width: int) -> int | None:
    """Rows of the smaller batch for ``going`` rows of a ``width``-row batch: the batch
    shards times a power of two, at most half the width; None when no such size holds them."""
    size = sharding.batch_divisor(self.mesh, self.rules)
    while size < going:
      size *= 2
    return size if size <= width // 2 else None


class _Layout(NamedTuple):
  """One batch on the host: Q prompts (after the shared prefix) left-padded to ``prompt_len``,
  and the prompt and sample index of each of its B = Q * n rows."""
  prompt_QxP: np.ndarray
  mask_QxP: np.ndarray
  prompt_idx_B: np.ndarray
  sample_idx_B: np.ndarray
  prompt_len: int
