"""The sampler's memory plan: its prefill and decode loop compiled for abstract arrays.

The programs are the ones ``Sampler.sample`` compiles (``Sampler.jitted``) for a full batch
of prompts of one padded length, without a shared prefix: the prefix path prefills the
same cache in two programs, the larger of which is this prefill with fewer prompt tokens.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from star_jax.engine.kv_cache import init_cache
from star_jax.engine.memory import (REFUSED, ProgramPlan, abstract_params, collective_bytes,
                                   compile_program, cost_compiler_options, cost_of,
                                   layers_alike, line_through, tree_bytes, with_layers)
from star_jax.engine.params import abstract_like, shardings_of
from star_jax.sampling.sampler import NEW_TOKENS_BUCKET, Sampler
from star_jax.sampling.sampling_params import SamplingParams


def plan_sampler(sampler: Sampler, params: nnx.State, prompt_len: int, max_new_tokens: int,
                 samples: int = 1, sp: SamplingParams = SamplingParams(), cost: bool = False,
                 cost_layers: bool = False) -> list[ProgramPlan]:
  """Plans of the prefill and the decode loop for one full batch (``sampler.batch_size``
  rows) of prompts of ``prompt_len`` tokens, ``samples`` rows per prompt.

  The KV cache is read off the decode state's shapes and shardings; activations are the
  temporaries (the cache itself is an output of the prefill and the decode loop's donated
  argument, so it is never among them unless XLA copies it).

  XLA counts a loop body once, so with scanned layers the programs' cost is one layer's: with
  ``cost`` the two programs are compiled again with the layers unrolled, for their work only
  (the decode loop's is then one decode step's, as without scanning). With ``cost_layers`` (a
  model whose layers are all alike) each cost is fitted as a + b x layers through copies of the
  model with 1 and 2 layers: an 8B model's unrolled sampler in a layer's host memory.
  """
  compiled = _compile(sampler, params, prompt_len, max_new_tokens, samples, sp)
  costs, note = None, ""
  if cost and sampler.cfg.scan_layers:
    costs, note = _unrolled_costs(sampler, prompt_len, max_new_tokens, samples, sp,
                                  cost_layers)
  plans = []
  for i, (what, exe, seconds, need, parts) in enumerate(compiled):
    unit = "decode step" if "decode" in what else "prefill"
    if exe is None:  # refused for want of device memory: no cost either
      program_cost, unit = {}, ""
    elif costs is not None:
      program_cost = costs[i]
    elif sampler.cfg.scan_layers:  # one layer's work: no roofline from it
      program_cost, unit = cost_of(exe), ""
    else:
      program_cost = cost_of(exe)
    plans.append(ProgramPlan(what, seconds, need, parts,
                             "KV cache from its shape and sharding; activations = temporaries"
                             + (REFUSED if exe is None else ""),
                             collective_bytes(exe.as_text()) if exe is not None else {},
                             program_cost, unit, note if program_cost else ""))
  return plans


def _unrolled_costs(sampler: Sampler, prompt_len: int, max_new_tokens: int, samples: int,
                    sp: SamplingParams, layers: bool) -> tuple[list[dict], str]:
  """The prefill's and a decode step's cost from compiles with the layers unrolled, and how
  they were had: directly, or (``layers``) fitted through copies of 1 and 2 layers."""
  cfg = sampler.cfg.replace(scan_layers=False)

  def costs_of(c) -> list[dict]:
    graphdef, unrolled = abstract_params(c, sampler.mesh)
    twin = Sampler(c, graphdef, sampler.mesh, batch_size=sampler.batch_size,
                   layout=sampler.layout)
    return [cost_of(exe) if exe is not None else {}
            for _, exe, _, _, _ in _compile(twin, unrolled, prompt_len, max_new_tokens,
                                            samples, sp, cost_compiler_options(sampler.mesh))]

  if not (layers and layers_alike(cfg)):
    return costs_of(cfg), ""
  one, two = costs_of(with_layers(cfg, 1)), costs_of(with_layers(cfg, 2))
  return ([line_through(a, 1, b, 2, cfg.num_layers) if a and b else {} for a, b in zip(one, two)],
          "extrapolated from loop-free compiles of 1 and 2 layers")


def _compile(sampler: Sampler, params: nnx.State, prompt_len: int, max_new_tokens: int,
             samples: int, sp: SamplingParams, compiler_options: dict | None = None
             ) -> list[tuple]:
  """(what, executable, compile seconds, memory need, parts) of the prefill and the decode
  loop."""
  cfg = sampler.cfg
  N = -(-max_new_tokens // NEW_TOKENS_BUCKET) * NEW_TOKENS_BUCKET
  P = sampler.padded_prompt_len(prompt_len, N)
  if P + N > cfg.max_seq_len:
    raise ValueError(f"{prompt_len} prompt tokens and {max_new_tokens} new ones exceed the "
                     f"model's max_seq_len {cfg.max_seq_len}")
  Q = sampler.prompts_per_batch(samples)
  B, S = Q * samples, P + N
  # The parameters where the sampler puts them for a call (resharded for layout "tensor").
  params = abstract_like(params, sampler.param_shardings(params))
  pre, dec = sampler.jitted(shardings_of(params), Q, samples, 0, P, S, N, sp.compiled_part())

  def i32(*shape):  # the jits carry the shardings
    return jax.ShapeDtypeStruct(shape, np.int32)

  pre_args = (params, None, i32(Q, P), i32(Q, P), i32(B), i32(B), i32(),
              jax.ShapeDtypeStruct((), np.float32))
  with jax.set_mesh(sampler.mesh):
    state = jax.eval_shape(pre, *pre_args)
  shape = f"{Q} prompts x {samples} of {P} tokens, {N} new: cache {B} x {S}"
  out = []
  for jitted, args, what in ((pre, pre_args, f"sampler prefill ({shape})"),
                             (dec, (params, state, i32()), f"sampler decode loop ({shape})")):
    exe, seconds, need = compile_program(jitted, args, what, sampler.mesh, compiler_options)
    parts = {"parameters": tree_bytes(params), "KV cache": kv_cache_bytes(sampler, B, S, N),
             "activations": need["temporaries"]}
    out.append((what, exe, seconds, need, parts))
  return out


def kv_cache_bytes(sampler: Sampler, B: int, S: int, N: int) -> int:
  """Per-device bytes of the decode state's keys and values for B rows of S slots."""
  shapes = jax.eval_shape(lambda: init_cache(sampler.cfg, B, S))
  layouts = sampler.state_shardings(B, S, N).cache
  return tree_bytes(abstract_like(shapes, layouts))
