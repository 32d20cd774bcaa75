r"""Fuzzing every reader of a file a user or a stranger can hand us, for minutes.

  python -m benchmarks.fuzz --minutes=10 [--only=gguf,cqa_jsonl]

Mutations of real files (``fuzzing.py``) go to each reader (``fuzz_targets.py``: GGUF,
safetensors and its index, a Hugging Face config.json and tokenizer.json, a run's config.json
and metrics.jsonl, the CommonsenseQA and GSM8K files, command-line overrides), the minutes
split evenly. One line per reader: inputs tried, read, refused in one line, violations (a
traceback, a hang, an allocation past the bound), each violation shown once; the exit status
is 1 when there was any. The test suite runs the same properties briefly
(``tests/*/test_fuzz_*.py``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from hypothesis import HealthCheck, Phase, given, settings

from benchmarks import fuzz_targets, fuzzing

MODULE = "benchmarks.fuzz"
CHUNK = 50  # examples per hypothesis run; runs repeat until the reader's time is up


def fuzz(name: str, directory: str, max_examples: int | None = None,
         seconds: float | None = None, derandomize: bool = False) -> fuzzing.Tally:
  """Mutations tried on reader ``name`` (seed files in ``directory``): ``max_examples`` of
  them (derandomized: the same inputs every run), or as many as ``seconds`` allow."""
  fuzzer = fuzz_targets.Fuzzer(name, directory)
  end = time.monotonic() + (seconds or 0)
  try:
    while True:
      n = max_examples or CHUNK

      @settings(max_examples=n, deadline=None, database=None, derandomize=derandomize,
                phases=[Phase.generate], suppress_health_check=list(HealthCheck))
      @given(fuzzer.strategy)
      def one(data):
        if seconds is None or time.monotonic() < end:
          fuzzer.try_input(data)

      one()
      if seconds is None or time.monotonic() >= end:
        return fuzzer.tally
  finally:
    fuzzer.close()


def _site(violation: str) -> str:
  """What tells violations apart: the exception and where it was raised, or the broken rule."""
  first = violation.split("\n")[0]
  return first.split(": ")[0] if " at " in first.split(": ")[0] else first[:40]


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--minutes", type=float, default=1.0, help="in all, split over the readers")
  ap.add_argument("--only", default="", help=f"comma-separated readers of {fuzz_targets.NAMES}")
  args = ap.parse_args(argv)
  names = [n for n in args.only.split(",") if n] or list(fuzz_targets.NAMES)
  unknown = set(names) - set(fuzz_targets.NAMES)
  if unknown:
    ap.error(f"unknown readers {sorted(unknown)}; known: {fuzz_targets.NAMES}")
  seconds = 60 * args.minutes / len(names)
  failed = 0
  print(f"python -m {MODULE} --minutes={args.minutes:g}: {seconds:.0f} s a reader", flush=True)
  with tempfile.TemporaryDirectory(prefix="star_jax_fuzz_") as tmp:
    for name in names:
      tally = fuzz(name, f"{tmp}/{name}", seconds=seconds)
      print(tally.line(name), flush=True)
      for site, v in {_site(v): v for v in reversed(tally.violations)}.items():
        print(f"  violation: {v.splitlines()[0][:240]}", flush=True)
      if tally.violations:
        print("  first in full:\n" + tally.violations[0], flush=True)
      failed += len(tally.violations)
  print(f"{'FAIL' if failed else 'ok'}: {failed} violations", flush=True)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
