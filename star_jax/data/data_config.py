"""Where a task's examples come from and how many are used: the config's ``data`` group.

Read by the tasks (``Task.load(split, data)``) and the TFDS builders. Task-specific
generation options (arithmetic's digit ranges) are the task's own ``Options``.
"""

from __future__ import annotations

import dataclasses

from star_jax.runtime.declared import key


@dataclasses.dataclass(frozen=True)
class DataConfig:
  dir: str = key("", "cqa/gsm8k: directory with the official jsonl files")
  holdout: int = key(0, "cqa/gsm8k: hold out this many train examples (chosen by data.seed) as "
                        "the eval set; only the train file is then read")
  train_file: str = key("", "with data.holdout: the train file (default: the official one in "
                            "data.dir)")
  tfds_dir: str = key("", "where TFDS writes its ArrayRecord files (\"\": <data dir>/tfds)")
  download: bool = key(True, "fetch missing official files when the network allows")
  download_timeout_s: float = key(30.0, "per file, before the run fails naming where to put it")
  use_tfds: bool = key(True, "False: read the official jsonl directly (same checks, records)")
  max_train: int = key(0, "train examples used, a seeded subset (0 = all; arithmetic: how many "
                          "problems to generate, 0 = 50,000)")
  max_eval: int = key(0, "eval examples used (0 = all; arithmetic: 0 = 1,000)")
  seed: int = key(0, "subset choice, hold-out choice and problem generation")

  def replace(self, **changes) -> "DataConfig":
    return dataclasses.replace(self, **changes)

  def limit(self, split: str) -> int:
    """How many examples of ``split`` to use (0: all)."""
    return self.max_train if split == "train" else self.max_eval
