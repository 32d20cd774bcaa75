r"""V-STaR after the fact: a run's held-out set, k samples a question, picked by a verifier.

  python -m star_jax.verify --checkpoint=runs/arith_vstar --samples=16
  python -m star_jax.verify --checkpoint=runs/arith_vstar --samples=16 --retrain \
      --verifier_dir=runs/arith_vstar/verifier_beta03 --set=beta=0.3 --set=init=generator

Reloads the verifier the run trained (``verifier/``) or, when it has none for that iteration
(a run without ``verifier.enabled``, or ``--retrain``), trains one on the run's recorded
samples (``iter_NNN/samples.jsonl``) with the run's ``verifier.*`` keys and the ``--set``
overrides. Then samples k answers per held-out question from the iteration's model, at
``eval.temperature`` with the seed the run's own evaluation used, and prints, for j = 1, 2,
4, .., k, pass@j, majority@j and the verifier's best-of-j (docs/variants.md, V-STaR). The
numbers go to ``--out`` (default ``RUN/verify_iter_N_k.json``) as one JSON object.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

from absl import flags, logging
from etils import epath

from star_jax.runtime import cli
from star_jax.runtime.errors import ConfigError

def define_flags() -> dict:
  """The command's flags (defined only when it runs: the module is a library too)."""
  return {
      "checkpoint": flags.DEFINE_string("checkpoint", None, "A star_jax run's workdir.",
                                        required=True),
      "samples": flags.DEFINE_integer("samples", 16, "k: answers sampled per held-out question."),
      "iteration": flags.DEFINE_integer("iteration", None, "Which M_n to sample from and whose "
                                        "samples (1..n) train the verifier (default: the last)."),
      "retrain": flags.DEFINE_bool("retrain", False, "Train a verifier even where one is saved."),
      "verifier_dir": flags.DEFINE_string("verifier_dir", None, "Where the verifiers are saved "
                                          "(default RUN/verifier)."),
      "set": flags.DEFINE_multi_string("set", [], "verifier.KEY=VALUE overrides of the run's "
                                       "keys, e.g. --set=beta=0.3 (docs/config.md, verifier)."),
      "out": flags.DEFINE_string("out", None, "JSON output (default RUN/verify_iter_N_kK.json)."),
  }


FLAGS: dict = {}


def overrides(config, pairs: list[str]):
  """``config`` with ``verifier.enabled`` and the ``KEY=VALUE`` overrides, typed as declared."""
  from star_jax.config import VerifierConfig
  fields = {f.name: f for f in dataclasses.fields(VerifierConfig)}
  values = {"enabled": True}
  for pair in pairs:
    key, sep, raw = pair.partition("=")
    key = key.removeprefix("verifier.")
    if not sep or key not in fields:
      raise ConfigError(f"--set={pair}: expected KEY=VALUE with KEY one of {sorted(fields)}")
    kind = type(getattr(config.verifier, key))
    try:
      values[key] = (raw.lower() in ("1", "true", "yes")) if kind is bool else kind(raw)
    except ValueError:
      raise ConfigError(f"--set={pair}: {raw!r} is not a {kind.__name__}") from None
  verifier = dataclasses.replace(config.verifier, **values)
  out = dataclasses.replace(config, verifier=verifier)
  from star_jax.star import verifier as verifier_lib
  verifier_lib.check(out)
  return out


def verify(run: str, k: int, iteration: int | None = None, retrain: bool = False,
           verifier_dir: str | None = None, sets: list[str] = (), out: str | None = None
           ) -> dict:
  """Best-of-j of the run's M_n by its verifier, against majority@j and pass@j."""
  from star_jax import config as config_lib
  from star_jax.experiment import workdir as wd
  from star_jax.experiment.build import build, make_sampler
  from star_jax.hub.checkpointer import Checkpointer
  from star_jax.runtime.errors import MissingFileError
  from star_jax.sampling import SamplingParams
  from star_jax.star import best_of_k, rollout, verifier as verifier_lib
  from star_jax.star.methods import get_method

  workdir = epath.Path(run)
  path = workdir / "config.json"
  if not path.exists():
    raise MissingFileError(f"{run} is not a star_jax run (no config.json)")
  if k < 1:
    raise ConfigError(f"--samples must be >= 1, got {k}")
  cfg = overrides(config_lib.load(json.loads(path.read_text())), list(sets))
  done = wd.finished_iterations(workdir)
  n = max(done, default=0) if iteration is None else iteration
  if n < 1 or n not in done:
    raise ConfigError(f"{run} has no finished iteration {n} to verify (finished: {done})")
  t0 = time.time()
  exp = build(cfg, workdir)
  sampler = make_sampler(exp, cfg)
  method = get_method(cfg.star.method)(cfg, exp, sampler, workdir)
  ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=None)
  try:
    base = ckpt.restore_model(exp.restore_target(masters=True), step=0)
    model = ckpt.restore_model(exp.restore_target(masters=True), step=n)
  finally:
    ckpt.close()
  few_shot = method.eval_few_shot(n)
  verifier = verifier_lib.train_after(cfg, exp, workdir, n, base, model, few_shot,
                                      verifier_dir, retrain)
  temperature = cfg.eval.temperature
  gens, _ = rollout.generate(exp.task, exp.tokenizer, sampler, exp.sampling_copy(model),
                             exp.eval_set, hint=False, few_shot=few_shot,
                             sampling=SamplingParams(temperature), n=k,
                             seed=cfg.seed * 1000 + 900 + n, desc=f"evaluate {k} samples")
  sampled = rollout.sampled_eval(exp.task, gens, exp.eval_set, k, temperature)
  scores = verifier_lib.score_generations(verifier, exp.task, exp.tokenizer, gens, few_shot)
  sampled.update(best_of_k.best_of_k_eval(exp.task, gens, scores, exp.eval_set, k))
  result = {"run": str(run), "iteration": n, "samples": k, "temperature": temperature,
            "eval_n": len(exp.eval_set), "pass_at": sampled["pass_at"],
            "majority_at": sampled["majority_at"],
            "verifier_best_of": sampled["verifier_best_of"],
            f"verifier_best_of_k_by_{exp.task.difficulty_name}": sampled["verifier_by_difficulty"],
            f"pass_at_k_by_{exp.task.difficulty_name}": {
                b: v["pass_at_k"] for b, v in sampled["by_difficulty"].items()},
            f"majority_at_k_by_{exp.task.difficulty_name}": {
                b: v["majority"] for b, v in sampled["by_difficulty"].items()},
            "verifier": dataclasses.asdict(cfg.verifier), **verifier.fields,
            "seconds": time.time() - t0}
  target = epath.Path(out or workdir / f"verify_iter_{n}_k{k}.json")
  target.write_text(json.dumps(result, indent=2, sort_keys=True))
  return result


def table(result: dict) -> str:
  """pass@j, majority@j and best-of-j (%) as a text table."""
  lines = ["   j | pass@j | majority@j | verifier best-of-j", "-" * 46]
  for j in result["pass_at"]:
    lines.append(f"{int(j):4d} | {100 * result['pass_at'][j]:6.1f} | "
                 f"{100 * result['majority_at'][j]:10.1f} | "
                 f"{100 * result['verifier_best_of'][j]:17.1f}")
  acc = result.get("verifier_pairwise_accuracy")
  lines.append(f"verifier: {result['verifier_pairs']} training pairs, held-out pairwise "
               f"accuracy {'n/a' if acc is None else f'{100 * acc:.1f}%'}")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise cli.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.log_progress()
  f = {name: flag.value for name, flag in FLAGS.items()}
  result = verify(f["checkpoint"], f["samples"], f["iteration"], f["retrain"],
                  f["verifier_dir"], f["set"], f["out"])
  logging.info("wrote %s", f["out"] or "the run's verify_iter_N_kK.json")
  sys.stdout.write(table(result) + "\n")
  sys.stdout.flush()


if __name__ == "__main__":
  FLAGS.update(define_flags())
  cli.run(main)
