"""Command-line overrides (``--config.KEY=VALUE``) with hostile values: the command line parses
them into a config that config.json records and reads back unchanged, or refuses in one line
naming the key, never a traceback (``benchmarks/fuzzing.py``)."""

import pytest

from benchmarks import fuzz


def test_hostile_overrides_parse_or_are_refused_in_one_line(tmp_path):
  tally = fuzz.fuzz("cli_overrides", str(tmp_path), max_examples=60, derandomize=True)
  assert tally.tried == 60 and not tally.violations, tally.violations[0]
  assert tally.ok > 0 and tally.refused > 0


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_number_config_json_cannot_record_is_refused(value):
  from benchmarks import fuzz_targets
  from star_jax.runtime.errors import ConfigError
  with pytest.raises(ConfigError, match=r"train\.learning_rate must be a finite number"):
    fuzz_targets.read_overrides([f"--config.train.learning_rate={value}"])
