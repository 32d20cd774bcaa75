r"""One whole STaR iteration two ways: star_jax's loop against transformers + TRL.

  python -m benchmarks.star_vs_trl \
      --data=../shared/data/commonsenseqa_train_rand_split.jsonl --questions=128
  python -m benchmarks.star_vs_trl --data=... --questions=64 --samples=4 --temperature=0.7

The peer is the loop TRL's maintainers recommend over a trainer (TRL #2425, "a small custom
training loop"), written as a user following transformers' and TRL's own docs would write it:
batched, left-padded ``generate`` for the rationales (a stop string per row,
``num_return_sequences`` for n), a Python filter, the hinted ``generate`` for the failures,
TRL's ``SFTTrainer`` for the fine-tune (a pre-tokenized prompt-completion dataset with its
``completion_mask``, ``completion_only_loss``, BFD packing, which is padding-free), and a greedy
``generate`` on the held-out questions. torch uses every core.

Both sides do the same work, from the same weights (SmolLM2-135M-Instruct from its GGUF,
float32): the same ``--questions`` real CQA train questions and ``--eval_questions`` held
out (star_jax's own ``data.holdout`` split of ``--data``), the same few-shot prompts token for
token (the cqa task's, encoded by the checkpoint's tokenizer), the same sampling (n, T, the
task's 128 new tokens, 32 rows a batch), the same answer check and keep rule
(``keep.keep``: right answer, rationale that reaches it, one a question), rationalization with
the hint on the failures, the same fine-tune (``--rows`` rows of ``--seq_len`` tokens a step,
packed, completion-only loss, ``--steps`` steps of Adam at ``--learning_rate``, no warmup, clip
1.0, restarting from M_0) and a greedy evaluation (prompts without exemplars, as M_1 is
evaluated). star_jax runs ``star_jax.star.run`` on a one-iteration config: its iteration 1's
phases (``metrics.jsonl``), after iteration 0 loaded the model and evaluated M_0. That
iteration compiles its programs (the sampler's for each prompt shape, the train step);
``--warm`` (the default) then runs it once more in the same process and a fresh workdir, its
programs compiled, as every iteration of a run after its first is (workload ``..., compiled``;
the same samples, kept set and steps). ``--cached`` (the default) runs it once more before
that, in a fresh workdir, with every program forgotten as in a new process but kept in the
run's compilation cache (``compilation_cache``, which the first run filled): what the first
iteration of a resumed run, or of the next run of a sweep, costs (workload ``..., from the
compilation cache``). The peer, eager torch, compiles nothing.

The scale: the paper's CQA iteration 1 samples 9,741 questions for 40 steps of 8 rows (~243
questions a step) and evaluates 1,221; the default steps are ``--questions`` / 243, at least 2
(a larger share of fine-tuning than the paper's, where the two are at parity), and
``--eval_questions`` defaults to an eighth of ``--questions``.

One JSON line per phase (sample, rationalize, fine-tune, evaluate, total) with both wall times
and the ratio (peer seconds / star_jax seconds: > 1 is star_jax faster), then the counts that
show the two did the same work (questions, kept, trained tokens, first and last loss).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from typing import Any, Sequence

from absl import app, flags, logging

from benchmarks import common, records
from benchmarks.decode import DEFAULT_CHECKPOINT, load_transformers
from benchmarks.star_sampling import cut_text, hf_generate

MODULE = "benchmarks.star_vs_trl"
PAPER_QUESTIONS_PER_STEP = 9741 / 40  # CQA iteration 1: every train question, 40 steps
PAPER_EVAL_SHARE = 1221 / 9741
PHASES = ("sample", "rationalize", "fine_tune", "evaluate")
OURS = {"sample": "sample_seconds", "rationalize": "rationalize_seconds",
        "fine_tune": "train_seconds", "evaluate": "eval_seconds"}


def default_steps(questions: int) -> int:
  return max(2, round(questions / PAPER_QUESTIONS_PER_STEP))


def star_config(data: str, checkpoint: str, questions: int, eval_questions: int, samples: int,
                temperature: float, steps: int, rows: int, seq_len: int, learning_rate: float,
                batch_size: int, seed: int, max_new_tokens: int = 0, overrides: dict = None):
  """The one-iteration cqa config both sides follow (``overrides``: dotted keys, for tests)."""
  from star_jax.config import text_task_config
  c = text_task_config("cqa", os.path.dirname(os.path.abspath(data)), "")
  c.model.checkpoint = checkpoint
  c.model.dtype = "float32"
  c.data.train_file = os.path.abspath(data)
  c.data.holdout = eval_questions
  c.data.max_train = questions
  c.data.max_eval = eval_questions
  c.data.download = False
  c.star.iterations = 1
  c.star.samples_per_question = samples
  c.star.temperature = temperature
  c.star.base_steps = steps
  c.train.batch_size, c.train.grad_accum = 1, rows  # the cqa config's rows, one at a time
  c.train.seq_len = seq_len
  c.train.learning_rate = learning_rate
  c.train.warmup_steps = 0
  c.sample.batch_size = batch_size
  c.star.max_new_tokens = max_new_tokens
  c.eval.choice_loglik = False  # the peer scores no choices by log-likelihood: the same work
  c.seed = seed
  for key, value in (overrides or {}).items():
    group, name = key.split(".")
    c[group][name] = value
  return c


def run_star_jax(config, workdir: str) -> tuple[dict, Any]:
  """star_jax's run of ``config``: iteration 1's metrics line, and the experiment's sets."""
  from star_jax import config as config_lib
  from star_jax import star
  from star_jax.experiment.models import make_task
  metrics = star.run(config, workdir)
  cfg = config_lib.load(config)
  task = make_task(cfg)
  return metrics[1], (task, task.load("train", cfg.data), task.load("eval", cfg.data), cfg)


class _Counting:
  """What the peer's trainer trained on: loss tokens, and each logged step's loss."""

  def __init__(self):
    self.tokens = 0
    self.losses: list[float] = []


def _trl_trainer(model, tokenizer_dir: str, examples, cfg, steps: int, seed: int, out: str,
                 counting: _Counting):
  """TRL's SFTTrainer as its docs set it up for a prompt-completion fine-tune."""
  import datasets
  import torch
  import transformers
  import trl

  rows = [{"input_ids": list(e.prompt) + list(e.completion),
           "completion_mask": [0] * len(e.prompt) + [1] * len(e.completion)} for e in examples]
  train = datasets.Dataset.from_list(rows)
  args = trl.SFTConfig(
      output_dir=out, max_steps=steps, per_device_train_batch_size=cfg.train.batch_size,
      gradient_accumulation_steps=cfg.train.grad_accum, learning_rate=cfg.train.learning_rate,
      lr_scheduler_type="constant", warmup_steps=0, weight_decay=cfg.train.weight_decay,
      adam_beta1=cfg.train.b1, adam_beta2=cfg.train.b2, adam_epsilon=1e-8,
      max_grad_norm=cfg.train.clip_norm, packing=True, max_length=cfg.train.seq_len,
      completion_only_loss=True, logging_steps=1, save_strategy="no", report_to="none",
      use_cpu=not torch.cuda.is_available(), seed=seed, data_seed=seed, bf16=False, fp16=False,
      dataloader_num_workers=0)

  class Trainer(trl.SFTTrainer):
    def compute_loss(self, model, inputs, *a, **kw):  # counts, then TRL's own loss
      counting.tokens += int((inputs["labels"][..., 1:] != -100).sum())
      return super().compute_loss(model, inputs, *a, **kw)

  class Losses(transformers.TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kw):
      if logs and "loss" in logs:
        counting.losses.append(float(logs["loss"]))

  tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
  return Trainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                 callbacks=[Losses()])


def run_peer(task, train_set, eval_set, cfg, checkpoint: str, tokenizer, torch_device: str,
             seed: int) -> dict:
  """The transformers + TRL iteration: phase seconds and what it kept and trained on."""
  import torch

  from star_jax.hub import resolve
  from star_jax.star import finetune as ft, keep as keep_lib
  from star_jax.star.rollout import Generation

  star = cfg.star
  n, temperature = star.samples_per_question, star.temperature
  max_new = star.max_new_tokens or task.max_new_tokens
  stop = task.stop_strings[0]
  model = trainable_transformers(checkpoint, torch_device)

  def generate(examples, hint: bool, few_shot: bool, k: int, temp: float, seed: int):
    ids = [tokenizer.encode_prompt(task.prompt(ex, hint=hint, few_shot=few_shot))
           for ex in examples]
    out = hf_generate(model, ids, cfg.sample.batch_size, k, temp, max_new, tokenizer.pad_id,
                       tokenizer.end_ids, stop, tokenizer.decode, torch_device, seed)
    return [Generation.of(task, ex, [cut_text(t, tokenizer.end_ids, tokenizer.pad_id, stop,
                                          tokenizer.decode) for t in rows])
            for ex, rows in zip(examples, out)]

  seconds = {}
  t0 = time.perf_counter()
  gens = generate(train_set, False, star.few_shot, n, temperature, seed)
  generation = keep_lib.keep(task, gens, "generation", star.max_kept_per_question,
                             star.require_supported)
  seconds["sample"] = time.perf_counter() - t0

  t0 = time.perf_counter()
  hinted = generate(generation.failed, True, star.few_shot_rationalization, n, temperature,
                    seed + 500) if star.rationalize and generation.failed else []
  rationalization = keep_lib.keep(task, hinted, "rationalization", star.max_kept_per_question,
                                  star.require_supported)
  seconds["rationalize"] = time.perf_counter() - t0

  t0 = time.perf_counter()
  kept = generation.records + rationalization.records
  by_id = {ex.id: ex for ex in train_set}
  examples = ft.training_examples(task, tokenizer, [(by_id[k["id"]], k["rationale"])
                                                    for k in kept],
                                  few_shot=star.few_shot_in_training)
  examples = [e for e in examples  # what star_jax's packing skips as too long
              if len(e.prompt) + len(e.completion) - 1 <= cfg.train.seq_len]
  counting = _Counting()
  if examples:  # star_jax too skips training when nothing was kept
    with tempfile.TemporaryDirectory() as out:
      model.train(True)
      trainer = _trl_trainer(model, tokenizer_dir(resolve(checkpoint), out), examples, cfg,
                             ft.steps_for_iteration(star, 1), seed, out, counting)
      with contextlib.redirect_stdout(sys.stderr):  # its step logs: stdout holds the records
        trainer.train()
      model.train(False)
  seconds["fine_tune"] = time.perf_counter() - t0

  t0 = time.perf_counter()
  with torch.inference_mode():
    evaluated = generate(eval_set, False, star.few_shot_in_training, 1, 0.0, seed)
  accuracy = sum(g.correct[0] for g in evaluated) / max(len(evaluated), 1)
  seconds["evaluate"] = time.perf_counter() - t0
  return {"seconds": seconds, "questions": len(train_set),
          "solved_by_generation": len(generation.solved),
          "solved_by_rationalization": len(rationalization.solved), "kept": len(kept),
          "train_tokens": counting.tokens,
          "train_first_loss": counting.losses[0] if counting.losses else None,
          "train_loss": counting.losses[-1] if counting.losses else None,
          "train_steps": len(counting.losses),
          "eval_accuracy": accuracy, "eval_n": len(evaluated)}


def trainable_transformers(checkpoint: str, torch_device: str):
  """The checkpoint as a transformers model the Trainer accepts: a GGUF file loads dequantized
  (float32 tensors) but flagged as quantized ("cannot perform fine-tuning on purely quantized
  models") and refuses ``save_pretrained``, so its weights go into a plain model of its
  architecture."""
  import torch
  import transformers
  model = load_transformers(checkpoint, torch_device)
  if getattr(model, "is_quantized", False) or getattr(model, "hf_quantizer", None) is not None:
    config = model.config
    if hasattr(config, "quantization_config"):
      del config.quantization_config
    plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    if plain.config.tie_word_embeddings:
      plain.tie_weights()
    model = plain.to(torch_device)
  return model.eval()


def tokenizer_dir(path: str, scratch: str) -> str:
  """A directory transformers' AutoTokenizer reads: the checkpoint's, or the GGUF's tokenizer."""
  if os.path.isdir(path):
    return path
  import transformers
  directory, name = os.path.split(path)
  tok = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
  target = os.path.join(scratch, "tokenizer")
  tok.save_pretrained(target)
  return target


def run(data: str, checkpoint: str = DEFAULT_CHECKPOINT, questions: int = 128,
        eval_questions: int = 0, samples: int = 1, temperature: float = 0.0, steps: int = 0,
        rows: int = 8, seq_len: int = 256, learning_rate: float = 1e-5, batch_size: int = 32,
        seed: int = 0, device: str = "auto", max_new_tokens: int = 0, markdown: bool = False,
        cmd: str | None = None, workdir: str | None = None, overrides: dict | None = None,
        warm: bool = True, cached: bool = True) -> list[dict[str, Any]]:
  from star_jax.hub import load_pretrained
  from star_jax.runtime import compiling

  cmd = cmd if cmd is not None else common.command(MODULE)
  eval_questions = eval_questions or max(8, round(questions * PAPER_EVAL_SHARE))
  steps = steps or default_steps(questions)
  devices, mesh, torch_device = common.setup_run(device, (1, 1, 1), "highest", True)
  machine = common.machine_info(devices, torch_device)
  config = star_config(data, checkpoint, questions, eval_questions, samples, temperature, steps,
                       rows, seq_len, learning_rate, batch_size, seed, max_new_tokens,
                       overrides)
  with tempfile.TemporaryDirectory() as scratch:
    config.compilation_cache = os.path.join(scratch, "compilation_cache")  # every run's
    ours, (task, train_set, eval_set, cfg) = run_star_jax(config, workdir or
                                                         os.path.join(scratch, "run"))
    ours_cached = None
    if cached:  # a new process's first iteration: nothing compiled in memory, all on disk
      compiling.forget_programs()
      ours_cached = run_star_jax(config, os.path.join(scratch, "cached"))[0]
    # The same iteration again in this process, in a fresh workdir: its programs are compiled,
    # as in every iteration of a run after the first (the same samples, kept set and steps).
    ours_warm = run_star_jax(config, os.path.join(scratch, "warm"))[0] if warm else None
  tokenizer = load_pretrained(checkpoint, mesh, dtype="float32").tokenizer
  common.free_memory()
  theirs = run_peer(task, train_set, eval_set, cfg, checkpoint, tokenizer, torch_device, seed)
  workload = f"{'greedy' if temperature == 0 else f'T={temperature:g}'} n={samples}"
  peer = (f"transformers {machine['transformers']} generate + TRL {common.version('trl')} "
          f"SFTTrainer (torch {machine['torch']}, {torch_device})")
  scale = {"questions": len(train_set), "eval_questions": len(eval_set), "steps": steps,
           "rows_per_step": rows, "seq_len": seq_len,
           "questions_per_step": len(train_set) / steps,
           "paper_questions_per_step": PAPER_QUESTIONS_PER_STEP}
  counted = ("solved_by_generation", "solved_by_rationalization", "kept", "train_tokens",
             "train_first_loss", "train_loss", "train_steps", "eval_accuracy", "eval_n")
  theirs_seconds = dict(theirs["seconds"], total=sum(theirs["seconds"].values()))
  results = []
  runs = (("", ours), (", from the compilation cache", ours_cached), (", compiled", ours_warm))
  for suffix, run_metrics in runs:
    if run_metrics is None:
      continue
    compiled = suffix == ", compiled"
    ours_seconds = {p: run_metrics[OURS[p]] for p in PHASES}
    ours_seconds["total"] = run_metrics["iteration_seconds"]
    name = workload + suffix
    work = {k: {"star_jax": run_metrics.get(k), "transformers": theirs[k]} for k in counted}
    for phase in (*PHASES, "total"):
      rec = records.record(
          "star_vs_trl", f"{name} {phase}", "seconds", ours_seconds[phase],
          theirs_seconds[phase], peer, machine, cmd, workload=name, phase=phase,
          samples=samples, temperature=temperature, checkpoint=checkpoint, dtype="float32",
          scale=scale, same_work=work, programs_compiled=compiled,
          compilation_cache=bool(suffix) and not compiled)
      # seconds: the ratio is theirs / ours (how many times faster star_jax is)
      rec["ratio"] = common.ratio(theirs_seconds[phase], ours_seconds[phase])
      records.emit(rec)
      results.append(rec)
  if markdown:
    records.print_markdown(results)
  return results


def define_flags() -> None:
  flags.DEFINE_string("checkpoint", DEFAULT_CHECKPOINT,
                      "known checkpoint name, Hugging Face directory or .gguf file")
  flags.DEFINE_string("data", None, "an official CommonsenseQA jsonl file (train_rand_split)",
                      required=True)
  flags.DEFINE_integer("questions", 128, "train questions sampled (a seeded subset of --data)")
  flags.DEFINE_integer("eval_questions", 0, "held-out questions (0: an eighth of --questions, "
                       "the paper's dev/train share)")
  flags.DEFINE_integer("samples", 1, "samples per question (1: greedy, the paper's)")
  flags.DEFINE_float("temperature", 0.0, "sampling temperature (0: greedy)")
  flags.DEFINE_integer("steps", 0, "fine-tune steps (0: --questions / 243, the paper's "
                       "questions per step, at least 2)")
  flags.DEFINE_integer("rows", 8, "rows a step (the paper's 8, one at a time)")
  flags.DEFINE_integer("seq_len", 256, "tokens a row: two or three kept CQA texts (~90 tokens "
                       "each) packed, so a step's 8 rows are ~20 texts, near the paper's 8 "
                       "sequences (the cqa config's 1,024 packs ~10 a row)")
  flags.DEFINE_float("learning_rate", 1e-5, "Adam's rate, constant")
  flags.DEFINE_integer("batch_size", 32, "sampled rows a batch, both sides")
  flags.DEFINE_integer("seed", 0, "question subset and sampling seed")
  flags.DEFINE_bool("warm", True, "also time star_jax's iteration a second time in the same "
                    "process, its programs compiled (as every iteration of a run after its "
                    "first); the peer has nothing to compile")
  flags.DEFINE_bool("cached", True, "also time it as a new process's first iteration whose "
                    "programs are in the compilation cache (a resumed run; a sweep's next run)")
  flags.DEFINE_enum("device", "auto", ["auto", "cpu", "gpu"], "jax platform (torch follows: "
                    "cuda for gpu, else cpu)")
  common.define_markdown_flag()


def main(argv):
  F = common.parsed_flags(argv)
  run(data=F.data, checkpoint=F.checkpoint, questions=F.questions,
      eval_questions=F.eval_questions, samples=F.samples, temperature=F.temperature,
      steps=F.steps, rows=F.rows, seq_len=F.seq_len, learning_rate=F.learning_rate,
      batch_size=F.batch_size, seed=F.seed, device=F.device, markdown=F.markdown,
      warm=F.warm, cached=F.cached)


if __name__ == "__main__":
  define_flags()
  app.run(main)
