"""Pre-flight: will STaR take off from this config's base model?

  python -m star_jax.preflight --config=configs/cqa.py --config.data.dir=DIR \
      [--workdir=RUN] [--questions=64] [--samples=4] [--temperature=0.7]

Prints pass@1, pass@k, the rationalization success rate, the share of questions with a
keepable rationale (by difficulty where the task has one), chance and the choices'
log-likelihood accuracy for multiple-choice tasks, and a verdict; the last stdout line is
the report as JSON. ``--workdir`` reuses a run's base model (its iteration-0 checkpoint)
or holds what the pre-flight builds (tokenizer, pretraining); default: a temporary dir.
"""

import json
import sys
import tempfile

from absl import app, flags, logging
from ml_collections import config_flags

from star_jax.star import preflight

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "", "A run's workdir to reuse, or where to build.")
_QUESTIONS = flags.DEFINE_integer("questions", 64, "Train questions to try.")
_SAMPLES = flags.DEFINE_integer("samples", 4, "Samples per question at --temperature (besides "
                                "the greedy one).")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.7, "Temperature of the samples.")
_SEED = flags.DEFINE_integer("seed", 0, "Question choice and sampling seed.")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  with tempfile.TemporaryDirectory() as tmp:
    report = preflight.run(_CONFIG.value, _WORKDIR.value or tmp, _QUESTIONS.value,
                           _SAMPLES.value, _TEMPERATURE.value, _SEED.value)
  print(preflight.format_report(report))
  print(json.dumps(report))
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main)
