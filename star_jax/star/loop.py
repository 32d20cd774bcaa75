"""The STaR outer loop (Zelikman et al. 2022), driven by an ml-collections config.

  M_0 = base model (optionally warm-started on gold rationales: ``pretrain``)
  for n in 1..N:
    generate a rationale for each (sampled) train question with M_{n-1}; keep correct ones
    rationalize failures: show the answer as a hint, keep rationales reaching it (hint removed)
    M_n = fine-tune(M_0 if restart_from_base else M_{n-1}, kept)
    evaluate M_n

The phases are in phases.py, what a finished iteration writes in artifacts.py.
Artifacts in ``workdir``: metrics.jsonl, iter_NNN/{kept,eval}.jsonl, checkpoints/,
config.json, tokenizer, accuracy.png (and accuracy_by_<difficulty>.png). With
``model.lora_rank`` every M_n is M_0's frozen base plus adapters: checkpoints/0 holds the
base, checkpoints/n the adapters alone. The workdir is any etils.epath path: a local
directory, or gs://bucket/dir where gcsfs is installed.
"""

from __future__ import annotations

import logging

import ml_collections
from etils import epath

from star_jax.engine.checkpointer import Checkpointer
from star_jax.runtime.files import read_jsonl
from star_jax.sampling import Sampler
from star_jax.star import artifacts, controls, phases, rollout, workdir as wd
from star_jax.star.board import Board
from star_jax.star.experiment import build


def run(config: ml_collections.ConfigDict, workdir: epath.PathLike, overwrite: bool = False
        ) -> list[dict]:
  """Runs (or resumes) every iteration of ``config`` in ``workdir``; returns the metrics."""
  wd.check_known_keys(config)
  controls.check_method(config.star.method)
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if overwrite:
    wd.clear(workdir)
  if wd.record_or_check_config(config, workdir):
    logging.info("resuming the run in %s (finished iterations: %s)", workdir,
                 wd.finished_iterations(workdir) or "none")
  exp = build(config, workdir)
  sampler = Sampler(exp.model_cfg, exp.graphdef, exp.mesh, end_ids=exp.tokenizer.end_ids,
                    pad_id=exp.tokenizer.pad_id, batch_size=config.sample.batch_size,
                    layout=config.sample.layout,
                    stop_sequences=rollout.stop_sequences(exp.tokenizer, exp.task.stop_strings))
  ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=None)
  r = phases.Run(config, exp, sampler, ckpt, workdir, Board(workdir))
  done = wd.finished_iterations(workdir)
  base = _base_model(r, done)
  last = max(done) if done else 0
  params = base if last == 0 else ckpt.restore_model(
      r.layout(masters=not config.star.restart_from_base), step=last)
  iteration = phases.iteration if config.star.method == "star" else controls.iteration
  for n in range(last + 1, config.star.iterations + 1):
    record, kept, params = iteration(r, n, base, params)
    result = phases.evaluate(r, n, params, config.star.few_shot_in_training)
    artifacts.finish(r, n, record, result, kept, params)
  ckpt.wait()
  ckpt.close()
  r.board.close()
  return read_jsonl(artifacts.metrics_path(workdir))


def _base_model(r: phases.Run, done: list[int]):
  """M_0: restored when iteration 0 is done; else built (pretrained if asked) and evaluated."""
  if 0 in done:
    return r.ckpt.restore_model(r.layout(masters=r.config.pretrain.steps > 0), step=0)
  base, record = r.exp.params, {"iteration": 0}
  if r.config.pretrain.steps > 0:
    base, pretrain_record = phases.pretrain(r)
    record.update(pretrain_record)
  artifacts.finish(r, 0, record, phases.evaluate(r, 0, base, r.config.star.few_shot), [], base)
  return base
