r"""Cold start: seconds from a fresh process to the first sampled token and to the first
train step, as a STaR run on the cqa config meets them (no compilation cache).

  python -m benchmarks.cold_start [--config=configs/cqa.py] \
      [--checkpoint=smollm2-135m-instruct] [--markdown]
  # a resumed run's process: the same command twice with one compilation cache (the
  # first fills it, the second reads its programs back; records say which)
  python -m benchmarks.cold_start --compilation_cache=/tmp/cold_start_cache

In one fresh process: import jax and star_jax, load the checkpoint, sample one new
token for the cqa task's few-shot prompt (compiling prefill and decode), then one
fine-tuning step of the config's shape (``train.batch_size`` rows x
``train.grad_accum`` micro-batches x ``train.seq_len`` tokens; compiling the step), and
the same step once more, warm: the difference of the last two milestones is the step's
own compute, which no compile cache removes.
Run it as its own command: a process that already compiled these programs measures
nothing. One JSON line per milestone, each with the seconds since the process
started (``star_jax``) and the compiles it paid for (``compiles``).
"""

from __future__ import annotations

import dataclasses
import time

_T0 = time.perf_counter()  # before jax is imported: the import is part of a cold start

from typing import Any  # noqa: E402

from absl import app, flags, logging  # noqa: E402

from benchmarks import common, records, star_iteration  # noqa: E402

MODULE = "benchmarks.cold_start"


def run(checkpoint: str = "smollm2-135m-instruct", config: str = "configs/cqa.py",
        seq_len: int = 0, markdown: bool = False, cmd: str | None = None,
        compilation_cache: str = "") -> list[dict[str, Any]]:
  import jax

  from star_jax import tasks
  from star_jax.engine import batching, sharding
  from star_jax import config as config_lib
  from star_jax.engine.trainer import Trainer
  from star_jax.hub import load_pretrained
  from star_jax.runtime import compiling
  from star_jax.sampling import Sampler
  from star_jax.star import finetune as ft

  cmd = cmd if cmd is not None else common.command(MODULE)
  if compilation_cache:  # as a run does (the config's compilation_cache)
    compiling.use_cache(compilation_cache)
  # (milestone, seconds, [[compiled, seconds]], [read from the cache])
  marks: list[tuple[str, float, list, list]] = []
  seen = [len(compiling.COMPILED), len(compiling.CACHE_HITS)]  # this run's, from here on

  def mark(name: str) -> None:
    new, hits = compiling.COMPILED[seen[0]:], compiling.CACHE_HITS[seen[1]:]
    seen[:] = [len(compiling.COMPILED), len(compiling.CACHE_HITS)]
    marks.append((name, time.perf_counter() - _T0, [[w, round(s, 2)] for w, s in new], hits))
    logging.info("%s after %.1f s", name, marks[-1][1])

  mark("imported")
  mesh = sharding.make_mesh([1, 1, 1], devices=jax.devices()[:1])
  pre = load_pretrained(checkpoint, mesh, dtype="float32")
  mark("checkpoint loaded")
  task, tok = tasks.get_task("cqa"), pre.tokenizer
  query = task.exemplars()[0]
  prompt = tok.encode_prompt(task.prompt(query))
  sampler = Sampler(pre.model_cfg, pre.graphdef, mesh, end_ids=tok.end_ids, pad_id=tok.pad_id,
                    batch_size=8)
  sampler.sample(pre.params, [prompt], 1)  # returns host arrays: the token is there
  mark("first sampled token")
  train_cfg = config_lib.load(star_iteration.load_config(config)).train
  train_cfg = dataclasses.replace(train_cfg, seq_len=seq_len or train_cfg.seq_len)
  completion = tok.encode(task.completion(query.meta["rationale"], query))
  example = batching.TrainExample(prompt, completion)
  trainer = Trainer(pre.graphdef, mesh, ft.optim_config(train_cfg, 1))
  rows = [example] * (train_cfg.batch_size * train_cfg.grad_accum)
  ft.finetune(trainer, pre.params, rows, train_cfg, 1, seed=0, desc="first step")
  mark("first train step")
  # The same step again, compiled already: what the first one cost beyond its own compute.
  ft.finetune(trainer, pre.params, rows, train_cfg, 1, seed=1, desc="second step")
  mark("second train step (warm)")

  machine = common.machine_info(jax.devices()[:1])
  recs = []
  for name, seconds, compiles, hits in marks:
    recs.append(records.record(
        "cold_start", name, "seconds_since_start", seconds, None, None, machine, cmd,
        checkpoint=checkpoint, prompt_tokens=len(prompt), train_rows=train_cfg.batch_size,
        train_micro_batches=train_cfg.grad_accum, train_seq_len=train_cfg.seq_len,
        compiles=compiles, compile_s=round(sum(s for _, s in compiles), 2),
        compilation_cache=compilation_cache or None,
        read_from_cache=hits))
    records.emit(recs[-1])
  if markdown:
    records.print_markdown(recs)
  return recs


def define_flags() -> None:
  flags.DEFINE_string("checkpoint", "smollm2-135m-instruct",
                      "known checkpoint name, Hugging Face directory or .gguf file")
  flags.DEFINE_string("config", "configs/cqa.py", "the config whose train step is timed")
  flags.DEFINE_integer("seq_len", 0, "train row length (0: the config's train.seq_len)")
  flags.DEFINE_string("compilation_cache", "", "keep the compiled programs in this directory "
                      "and read them back from it, as a run does (a second invocation with "
                      "the same directory is a resumed run's process)")
  common.define_markdown_flag()


def main(argv):
  F = common.parsed_flags(argv)
  run(checkpoint=F.checkpoint, config=F.config, seq_len=F.seq_len, markdown=F.markdown,
      compilation_cache=F.compilation_cache)


if __name__ == "__main__":
  define_flags()
  app.run(main)
