"""What a workdir already holds: the recorded config, finished iterations, result shards.

Resuming is by construction: every artifact is written atomically once complete,
and each phase first looks for what an earlier (killed) process finished.
Every path is an etils.epath path, so a workdir may be local or gs://.
"""

from __future__ import annotations

import json
from typing import Any

import ml_collections
from etils import epath

from star_jax.runtime.distributed import barrier, is_primary
from star_jax.runtime.files import read_jsonl, write_atomic, write_jsonl
from star_jax.star.defaults import base_config

# Keys that change how a run is executed but not its results: free to differ on resume.
OPERATIONAL_KEYS = {"checkpoint_every", "checkpoint_async", "sample.shard_size",
                    "data.download", "data.tfds_dir", "data.download_timeout_s",
                    # iteration n depends on n alone (its questions, steps and seed), so a
                    # finished run can be extended by more iterations, or stopped earlier
                    "star.iterations"}
# Free-form sub-dicts whose own keys are not checked against the defaults.
FREE_FORM = ("model.overrides", "pretrain.data", "task_options")
ARTIFACTS = ("config.json", "metrics.jsonl", "checkpoints", "pretrain_ckpt", "accuracy.png",
             "delta.png", "tensorboard")


class ConfigMismatchError(ValueError):
  pass


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict) and key not in FREE_FORM:
      out.update(flatten(v, key + "."))
    else:
      out[key] = v
  return out


def check_known_keys(config: ml_collections.ConfigDict) -> None:
  """Rejects keys the defaults do not define (a typo would otherwise be silently ignored)."""
  known = set(flatten(base_config().to_dict()))
  unknown = sorted(set(flatten(config.to_dict())) - known)
  if unknown:
    raise ValueError(f"unknown config keys {unknown}; every key is listed in "
                     "star_jax/defaults.py")


def record_or_check_config(config: ml_collections.ConfigDict, workdir: epath.PathLike) -> bool:
  """Writes config.json for a new run; for an existing one, insists the config is the same.

  Returns True when resuming. Raises ConfigMismatchError naming the keys that differ.
  """
  path = epath.Path(workdir) / "config.json"
  current = json.loads(json.dumps(config.to_dict(), default=str))
  if path.exists():
    recorded = json.loads(path.read_text(encoding="utf-8"))
    old, new = flatten(recorded), flatten(current)
    diff = sorted(k for k in set(old) | set(new)
                  if k not in OPERATIONAL_KEYS and old.get(k, "<unset>") != new.get(k, "<unset>"))
    if diff:
      lines = [f"  {k}: {old.get(k, '<unset>')!r} (recorded) -> {new.get(k, '<unset>')!r}"
               for k in diff]
      raise ConfigMismatchError(
          f"{workdir} holds a run with a different config; resuming would mix results:\n"
          + "\n".join(lines) + f"\nUse another --workdir, or pass --overwrite to delete the "
          "earlier run's artifacts and start over.")
    resumed = True
  else:
    resumed = False
  write_atomic(path, json.dumps(current, indent=2, sort_keys=True))
  barrier("config recorded")  # no process reads the workdir before every process checked it
  return resumed


def clear(workdir: epath.PathLike) -> None:
  """Deletes a previous run's artifacts (only the files a run writes)."""
  workdir = epath.Path(workdir)
  if not is_primary() or not workdir.is_dir():
    return
  for path in workdir.iterdir():
    if path.name in ARTIFACTS or path.name.startswith(("iter_", "tokenizer.", "accuracy_by_")):
      path.rmtree() if path.is_dir() else path.unlink()


def finished_iterations(workdir: epath.PathLike) -> list[int]:
  return [r["iteration"] for r in read_jsonl(epath.Path(workdir) / "metrics.jsonl")]


class Shards:
  """Results of a long phase saved in numbered shards, so a killed phase resumes."""

  def __init__(self, directory: epath.PathLike | None):
    self.directory = None if directory is None else epath.Path(directory)

  def _path(self, k: int) -> epath.Path:
    return self.directory / f"shard_{k:05d}.jsonl"

  def load(self, k: int, ids: list[str]) -> list[dict] | None:
    if self.directory is None or not self._path(k).exists():
      return None
    rows = read_jsonl(self._path(k))
    if [r["id"] for r in rows] != ids:
      raise ValueError(f"{self._path(k)} holds results for other questions than this run "
                       "asks for; the workdir belongs to a different run")
    return rows

  def save(self, k: int, rows: list[dict]) -> None:
    if self.directory is not None:
      write_jsonl(self._path(k), rows)

  def remove(self) -> None:
    if self.directory is not None and is_primary() and self.directory.is_dir():
      self.directory.rmtree()
