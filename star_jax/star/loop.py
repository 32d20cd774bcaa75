"""The STaR outer loop (Zelikman et al. 2022, Algorithm 1), driven by a config:

  M_0 = the base model, warm-started on the seed set P if asked          seed.py
  evaluate M_0
  for n in 1..N:                                                         iteration.py
    sample rationales for the questions with M_{n-1}; keep the right ones
    rationalize the failures (the answer as a hint); keep the right ones, hint removed
    M_n = fine-tune(M_0 if star.restart_from_base else M_{n-1}, kept)
    (V-STaR, verifier.enabled: a DPO verifier on the right and wrong samples)  verifier.py
    evaluate M_n (with eval.samples = k and a verifier: best-of-k by its score)

``star.method`` swaps the iteration for a control (methods.py). Artifacts in ``workdir``:
config.json, metrics.jsonl, iter_NNN/{kept,eval,samples}.jsonl, verifier/, checkpoints/, the tokenizer,
accuracy.png (and accuracy_by_<difficulty>.png), tensorboard/ (docs/workdir.md). With
``model.lora_rank`` every M_n is M_0's frozen base plus adapters: checkpoints/0 holds the
base, checkpoints/n the adapters alone. The workdir is any etils.epath path: a local
directory, or gs://bucket/dir where gcsfs is installed.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from etils import epath

from star_jax import config as config_lib
from star_jax.experiment import artifacts, report, workdir as wd
from star_jax.experiment.board import Board
from star_jax.experiment.build import build, check, make_sampler
from star_jax.hub.checkpointer import Checkpointer
from star_jax.runtime import compiling, distributed, resources
from star_jax.runtime.errors import CheckpointError
from star_jax.runtime.files import read_jsonl
from star_jax.star import finetune as ft, seed, verifier as verifier_lib
from star_jax.star.methods import get_method
from star_jax.star.record import iteration_record


def run(config: Any, workdir: epath.PathLike, overwrite: bool = False) -> list[dict]:
  """Runs (or resumes) every iteration of ``config`` (a ConfigDict or ``config.Config``) in
  ``workdir``; returns the metrics. Everything the config names is checked before the
  workdir is written: a run that fails to start leaves nothing behind, and a config that
  cannot work (the methods' and the verifier's ``check``) is refused there in one line."""
  cfg = config_lib.load(config)
  method_cls = get_method(cfg.star.method)
  method_cls.check(cfg)
  verifier_lib.check(cfg, method_cls)
  workdir = epath.Path(workdir)
  check(cfg)
  # One run per workdir: locked before anything is written. SIGTERM stops at a safe point.
  # Compiled programs kept for the next process (a resume); the process's own cache after.
  with wd.WorkdirLock(workdir), distributed.preemption_handling(), compiling.cache_in(
      _compilation_cache(cfg, workdir)):
    return _locked_run(cfg, method_cls, workdir, overwrite)


def _compilation_cache(cfg: config_lib.Config, workdir: epath.Path) -> str:
  """The directory compiled programs are kept in: the config's, or by default the one the
  environment names for JAX (``JAX_COMPILATION_CACHE_DIR``), else WORKDIR/compilation_cache."""
  if cfg.compilation_cache != "workdir":
    return cfg.compilation_cache
  return os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(workdir / "compilation_cache")


def _locked_run(cfg: config_lib.Config, method_cls, workdir: epath.Path, overwrite: bool
                ) -> list[dict]:
  """``run`` once the config is checked and this process holds the workdir."""
  if overwrite:
    wd.clear(workdir)
  resuming = wd.is_resume(cfg, workdir)
  done = wd.finished_iterations(workdir) if resuming else []
  todo = [n for n in range(cfg.star.iterations + 1) if n not in done]
  if not todo:
    logging.info("nothing to do: %s holds all %d iterations of this run", workdir,
                 cfg.star.iterations)
    return read_jsonl(artifacts.metrics_path(workdir))
  if resuming:
    logging.info("resuming the run in %s (finished iterations: %s)", workdir, done or "none")
  else:
    wd.clear(workdir)  # debris of a start that failed before recording its config
  t0 = time.time()
  exp = build(cfg, workdir)
  warning = ft.update_reach_check(exp, cfg.train, ft.steps_for_iteration(cfg.star, 1))
  if warning:
    logging.warning("%s", warning)
  wd.record_config(cfg, workdir)
  ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=None)
  board = Board(workdir)
  method = method_cls(cfg, exp, make_sampler(exp, cfg), workdir, board)
  distributed.note_iteration(0)
  base = _base_model(cfg, method, ckpt, 0 in done)
  last, model = _latest_model(workdir, exp, method, ckpt, max(done) if done else 0, base)
  unverified = None  # the last verifier's samples gave no pairs: why
  for n in range(last + 1, cfg.star.iterations + 1):
    distributed.note_iteration(n)
    started = time.time()
    result = method.iteration(n, base, model)
    model = result.params
    # D_VER: the generated samples, right and wrong (V-STaR's verifier trains on them)
    verifier_lib.record_samples(workdir, n, exp.task, result.samples, cfg.star.require_supported)
    few_shot = method.eval_few_shot(n)
    verifier = unverified = None
    if verifier_lib.due(cfg, n):
      try:
        verifier = verifier_lib.train_after(cfg, exp, workdir, n, base, model, few_shot)
      except verifier_lib.NoPairsError as e:  # the iteration is kept; a later verifier may do
        logging.warning("%s", e)
        unverified = e
    evaluation = method.evaluate(n, model, few_shot, verifier)
    record = iteration_record(n, exp.task, result, evaluation)
    record.update(verifier.fields if verifier else {})
    record["iteration_seconds"] = time.time() - started
    record.update(resources.process_fields())  # memory, files, programs: do they grow?
    artifacts.finish(workdir, ckpt, board, exp.task, record, evaluation.records, result.kept,
                     model)
  ckpt.wait()
  ckpt.close()
  board.close()
  metrics = read_jsonl(artifacts.metrics_path(workdir))
  logging.info("%s", report.closing_summary(metrics, workdir, time.time() - t0))
  if unverified is not None:
    raise verifier_lib.NoPairsError(_rerun_for_pairs(cfg, method_cls, workdir, unverified),
                                    unverified.why)
  return metrics


def _rerun_for_pairs(cfg: config_lib.Config, method_cls, workdir: epath.Path,
                     e: verifier_lib.NoPairsError) -> str:
  """``e`` and what a run whose last verifier found no pairs can do next, in one line."""
  n = cfg.star.iterations
  kept = f"{e}; iterations 0..{n} are kept in {workdir}"
  if e.why == "held_out":  # verifier.* keys are the run's config: retrain beside it
    return (f"{kept}: train a verifier on their samples with python -m star_jax.verify "
            f"--checkpoint={workdir} --retrain --set=heldout_share=0")
  if e.why == "too_long":
    return (f"{kept}: a verifier needs a longer model context (model.overrides.max_seq_len) "
            f"or shorter samples (star.max_new_tokens), in a new workdir")
  return (f"{kept}: rerun with --config.star.iterations={n + 1} to sample more for a verifier "
          f"after it, or start a new workdir with more star.samples_per_question or another "
          f"{method_cls.temperature_key}")


def _latest_model(workdir, exp, method, ckpt: Checkpointer, last: int, base):
  """(n, M_n) of the newest finished iteration whose checkpoint restores: an iteration whose
  checkpoint is damaged (a copy cut short, bit rot) is set aside, its metrics line dropped,
  and done again from the one before."""
  while last > 0:
    try:
      return last, ckpt.restore_model(exp.restore_target(masters=not method.restarts_from_base),
                                      step=last)
    except CheckpointError as e:
      kept = ckpt.set_aside(last)
      logging.warning("%s (kept as %s); iteration %d is done again from M_%d", e, kept.name,
                      last, last - 1)
      artifacts.drop_metrics(workdir, last)
      last -= 1
  return 0, base


def _base_model(cfg: config_lib.Config, method, ckpt: Checkpointer, saved: bool):
  """M_0: restored when iteration 0 is done; else built (warm-started if asked), evaluated
  and saved as iteration 0."""
  if saved:
    return seed.saved_base(cfg, method.exp, ckpt)
  on_step = method.board.step_callback(method.workdir, 0) if method.board else None
  base, _, fields = seed.base_model(cfg, method.exp, method.workdir, on_step)
  evaluation = method.evaluate(0, base, method.eval_few_shot(0))
  record = iteration_record(0, method.exp.task, None, evaluation, fields)
  record.update(resources.process_fields())
  artifacts.finish(method.workdir, ckpt, method.board, method.exp.task, record,
                   evaluation.records, [], base)
  return base
