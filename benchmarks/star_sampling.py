"""The STaR sampling workload: few-shot CommonsenseQA prompts, questions per second.

  python -m benchmarks.star_sampling \
      --data=../shared/data/commonsenseqa_train_rand_split.jsonl --questions=64 [--markdown]

The prompts are the cqa task's own (six exemplars, then the question), encoded as
the STaR loop encodes them, with real questions from ``--data`` (an official
CommonsenseQA jsonl file). Two workloads, as a STaR iteration samples them:

  greedy     n = 1, greedy (the paper's rationale generation)
  sampled    n = 4 samples per question at temperature 0.7 (ReST-EM-style)

each to the task's 128 new tokens at most, a row stopping at the end of its
answer (the task's stop string). For each, star_jax with prefix reuse (the few-
shot block prefilled once per call, a question once for its n samples), star_jax
without, and transformers ``generate`` on the same prompt ids (left-padded to each
batch's longest prompt, ``num_return_sequences`` for n, the same stop string as
a per-row stopping criterion), all with the same batch of rows. Every figure is
questions per second of whole calls (prefill included) after one warm-up call;
the warm-up's extra time is reported as compile (jax) / warm-up (torch) time.

One JSON line per (workload, star_jax variant), with its ``ratio`` to transformers.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from absl import app, flags, logging

from benchmarks import common, records
from benchmarks.decode import DEFAULT_CHECKPOINT, load_transformers

MODULE = "benchmarks.star_sampling"
WORKLOADS = {"greedy": (1, 0.0), "sampled": (4, 0.7)}  # name -> (samples, temperature)


def cqa_prompts(path: str, questions: int, tokenizer, seed: int = 0):
  """The task, its examples and their few-shot prompt ids (the STaR loop's encoding)."""
  from star_jax import tasks
  from star_jax.data.sources import SOURCES, read_jsonl
  task = tasks.get_task("cqa")
  examples = task.examples(read_jsonl(path, SOURCES["commonsense_qa"].parse, "train"))
  examples = tasks.take_subset(examples, questions, seed)
  ids = [tokenizer.encode_prompt(task.prompt(ex)) for ex in examples]
  return task, examples, ids


def hf_generate(model, prompt_ids: list[list[int]], batch: int, n: int, temperature: float,
                 max_new: int, pad_id: int, end_ids: Sequence[int], stop_text: str, decode_fn,
                 torch_device: str, seed: int) -> list[list[list[int]]]:
  """transformers generate over batches of ``batch`` rows (``batch // n`` questions)."""
  import torch
  import transformers

  class StopAtText(transformers.StoppingCriteria):
    """Per row: done once its new tokens spell the stop text (like our host-side check)."""

    def __init__(self, start: int):
      self.start = start

    def __call__(self, input_ids, scores, **kwargs):
      return torch.tensor([stop_text in decode_fn(row[self.start:].tolist()) for row in input_ids],
                          device=input_ids.device)

  per = max(batch // n, 1)
  out = []
  torch.manual_seed(seed)
  for s in range(0, len(prompt_ids), per):
    chunk = prompt_ids[s:s + per]
    P = max(len(p) for p in chunk)
    ids = torch.full((len(chunk), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(chunk), P), dtype=torch.long)
    for r, p in enumerate(chunk):
      ids[r, P - len(p):] = torch.tensor(p)
      mask[r, P - len(p):] = 1
    kwargs = dict(do_sample=temperature > 0, num_return_sequences=n, max_new_tokens=max_new,
                  pad_token_id=pad_id, eos_token_id=list(end_ids), num_beams=1,
                  stopping_criteria=transformers.StoppingCriteriaList([StopAtText(P)]))
    if temperature > 0:
      kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
    else:
      kwargs.update(temperature=None, top_k=None, top_p=None)
    with torch.inference_mode():
      gen = model.generate(input_ids=ids.to(torch_device), attention_mask=mask.to(torch_device),
                           **kwargs)
    common.torch_sync(torch_device)
    new = gen[:, P:].cpu().numpy()
    for q in range(len(chunk)):
      out.append([new[q * n + j].tolist() for j in range(n)])
  return out


def cut_text(tokens: list[int], end_ids, pad_id: int, stop_text: str, decode_fn) -> str:
  """The text of a continuation up to its end token / stop text, for comparisons."""
  kept = []
  for t in tokens:
    if t in end_ids or t == pad_id:
      break
    kept.append(t)
  text = decode_fn(kept)
  return text.split(stop_text, 1)[0]


def run(data: str, checkpoint: str = DEFAULT_CHECKPOINT, questions: int = 64,
        batch_size: int = 32, workloads: Sequence[str] = ("greedy", "sampled"),
        max_new_tokens: int = 128, iters: int = 1, device: str = "auto",
        mesh_shape: Sequence[int] = (1, 1, 1), matmul_precision: str = "highest",
        peers: bool = True, seed: int = 0, markdown: bool = False,
        cmd: str | None = None) -> list[dict[str, Any]]:
  from star_jax.hub import load_pretrained
  from star_jax.sampling import Sampler, SamplingParams
  from star_jax.experiment.build import stop_sequences

  for w in workloads:
    if w not in WORKLOADS:
      raise ValueError(f"unknown workload {w!r}; known: {sorted(WORKLOADS)}")
  cmd = cmd if cmd is not None else common.command(MODULE)
  devices, mesh, torch_device = common.setup_run(device, mesh_shape, matmul_precision, peers)
  pre = load_pretrained(checkpoint, mesh, dtype="float32")
  cfg, tok = pre.model_cfg, pre.tokenizer
  task, examples, prompt_ids = cqa_prompts(data, questions, tok, seed)
  lengths = [len(p) for p in prompt_ids]
  logging.info("%d CQA prompts of %d-%d tokens (mean %.0f)", len(prompt_ids), min(lengths),
               max(lengths), np.mean(lengths))
  stop_text = task.stop_strings[0]
  model = load_transformers(checkpoint, torch_device) if peers else None
  machine = common.machine_info(devices, torch_device if peers else None)
  peer = (f"transformers {machine['transformers']} generate (torch {machine['torch']}, "
          f"{torch_device})") if peers else None
  seqs = stop_sequences(tok, task.stop_strings)
  results = []
  for w in workloads:
    n, temperature = WORKLOADS[w]
    sp = SamplingParams(temperature=temperature)
    ours = {}
    for reuse in (True, False):
      sampler = Sampler(cfg, pre.graphdef, mesh, end_ids=tok.end_ids, pad_id=tok.pad_id,
                        batch_size=batch_size, stop_sequences=seqs, prefix_reuse=reuse)
      holder = {}

      def call():
        holder["out"] = sampler.sample(pre.params, prompt_ids, max_new_tokens, sp, n=n,
                                       seed=seed, stop_strings=task.stop_strings,
                                       decode_fn=tok.decode)
      timing = common.time_calls(call, iters, f"star_jax {w} reuse={reuse}", logging.info)
      out = holder["out"]
      ours[reuse] = (timing, out)
    theirs_timing, theirs_texts = None, None
    if peers:
      hold = {}
      def hf_call():
        hold["out"] = hf_generate(model, prompt_ids, batch_size, n, temperature,
                                   max_new_tokens, tok.pad_id, tok.end_ids, stop_text,
                                   tok.decode, torch_device, seed)
      theirs_timing = common.time_calls(hf_call, iters, f"transformers {w}", logging.info)
      theirs_texts = [[cut_text(t, tok.end_ids, tok.pad_id, stop_text, tok.decode) for t in q]
                      for q in hold["out"]]
    q_per_s = lambda t: len(prompt_ids) / t.median
    for reuse in (True, False):
      timing, out = ours[reuse]
      texts = [[cut_text(out.sequences(i, j), tok.end_ids, tok.pad_id, stop_text, tok.decode)
                for j in range(n)] for i in range(len(prompt_ids))]
      same = None
      if theirs_texts is not None and temperature == 0:
        same = float(np.mean([a[0] == b[0] for a, b in zip(texts, theirs_texts)]))
      answers = [task.extract_answer(t[0]) for t in texts]
      rec = records.record(
          "star_sampling", f"{w} n={n} {'reuse' if reuse else 'no reuse'}", "questions_per_s",
          q_per_s(timing), q_per_s(theirs_timing) if theirs_timing else None, peer, machine, cmd,
          checkpoint=checkpoint, dtype="float32", workload=w, samples=n, temperature=temperature,
          prefix_reuse=reuse, questions=len(prompt_ids), batch_rows=batch_size,
          max_new_tokens=max_new_tokens, prompt_tokens_mean=float(np.mean(lengths)),
          prefill_tokens_per_call=out.prefill_tokens,
          new_tokens_per_call=int(out.lengths.sum()),
          star_jax_detail=timing.as_dict(),
          transformers_detail=theirs_timing.as_dict() if theirs_timing else None,
          greedy_text_agreement=same,
          answered_share=float(np.mean([a is not None for a in answers])))
      records.emit(rec)
      results.append(rec)
    common.free_memory()
  if markdown:
    records.print_markdown(results)
  return results


def define_flags() -> None:
  common.define_peer_flags(DEFAULT_CHECKPOINT)
  flags.DEFINE_string("data", None, "an official CommonsenseQA jsonl file (train_rand_split)",
                      required=True)
  flags.DEFINE_integer("questions", 64, "questions sampled from --data (seeded)")
  flags.DEFINE_integer("batch_size", 32, "rows per batch, the same for every side")
  flags.DEFINE_list("workloads", ["greedy", "sampled"], "greedy (n=1) and/or sampled (n=4, T=0.7)")
  flags.DEFINE_integer("max_new_tokens", 128, "new tokens per row at most (the cqa default)")
  flags.DEFINE_integer("iters", 1, "timed calls after the first (compiling / warm-up) one")
  flags.DEFINE_integer("seed", 0, "question subset and sampling seed")
  common.define_markdown_flag()


def main(argv):
  F = common.parsed_flags(argv)
  run(data=F.data, checkpoint=F.checkpoint, questions=F.questions, batch_size=F.batch_size,
      workloads=F.workloads, max_new_tokens=F.max_new_tokens, iters=F.iters, device=F.device,
      mesh_shape=F.mesh, matmul_precision=F.matmul_precision, peers=F.peers, seed=F.seed,
      markdown=F.markdown)


if __name__ == "__main__":
  define_flags()
  app.run(main)
