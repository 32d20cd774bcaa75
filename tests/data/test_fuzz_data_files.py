"""CommonsenseQA and GSM8K files mutated line by line (wrong types, deep nesting, non-UTF-8, cut
short): the task loads them or stops at "file:line: why", never a traceback
(``benchmarks/fuzzing.py``)."""

import pytest

from benchmarks import fuzz


@pytest.mark.parametrize("name", ["cqa_jsonl", "gsm8k_jsonl"])
def test_a_mutated_data_file_loads_or_is_refused_in_one_line(tmp_path, name):
  tally = fuzz.fuzz(name, str(tmp_path / name), max_examples=100, derandomize=True)
  assert tally.tried == 100 and not tally.violations, tally.violations[0]
  assert tally.refused > 0


def test_nesting_past_the_parser_is_a_line_not_a_recursion_error(tmp_path):
  from star_jax.data import DataFormatError, read_jsonl
  from star_jax.data.sources import parse_gsm8k
  path = tmp_path / "train.jsonl"
  path.write_text('{"question": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
  with pytest.raises(DataFormatError, match=r"train\.jsonl:1: JSON nested too deeply"):
    read_jsonl(str(path), parse_gsm8k, "train")
