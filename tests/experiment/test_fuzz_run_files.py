"""A workdir's config.json and metrics.jsonl, mutated (a crash can leave anything, a user can
edit them): resuming reads them or stops in one line naming the file, never a traceback
(``benchmarks/fuzzing.py``). A config.json that reads but differs lists the keys that differ."""

import pytest

from benchmarks import fuzz


@pytest.mark.parametrize("name", ["run_config", "metrics_jsonl"])
def test_a_mutated_run_file_resumes_or_is_refused_in_one_line(tmp_path, name):
  tally = fuzz.fuzz(name, str(tmp_path / name), max_examples=100, derandomize=True)
  assert tally.tried == 100 and not tally.violations, tally.violations[0]
  assert tally.refused > 0


@pytest.mark.parametrize("text,says", [
    (b"null\n", r"metrics\.jsonl:1: expected a JSON object, got null"),
    (b'{"iteration": "1"}\n', r"metrics\.jsonl: iteration '1' is not a whole number"),
    (b'{"iteration": 1}\n\xff\n', r"metrics\.jsonl:2: not UTF-8"),
])
def test_a_damaged_metrics_file_is_one_line(tmp_path, text, says):
  from star_jax.experiment import workdir
  from star_jax.runtime.errors import WorkdirMismatchError
  (tmp_path / "metrics.jsonl").write_bytes(text)
  with pytest.raises(WorkdirMismatchError, match=says) as e:
    workdir.finished_iterations(tmp_path)
  assert "\n" not in str(e.value)
