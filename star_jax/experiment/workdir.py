"""What a workdir already holds: the recorded config, finished iterations, result shards.

Resuming is by construction: every artifact is written atomically once complete,
and each phase first looks for what an earlier (killed) process finished.
Every path is an etils.epath path, so a workdir may be local or gs://.

One run per workdir: ``WORKDIR/run.lock`` (``experiment/lock.py``).
"""

from __future__ import annotations

import json

from etils import epath

from star_jax.config import OPERATIONAL_KEYS, Config, base_config, flatten, load, to_dict
from star_jax.experiment.lock import (HEARTBEAT_SECONDS, LOCK_NAME, STALE_SECONDS,  # noqa: F401
                                      WorkdirLock, WorkdirLockedError)
from star_jax.runtime.distributed import barrier, is_primary
from star_jax.runtime.errors import WorkdirMismatchError
from star_jax.runtime.files import read_json, read_jsonl, write_atomic, write_jsonl

ARTIFACTS = ("config.json", "metrics.jsonl", "checkpoints", "pretrain_ckpt", "accuracy.png",
             "delta.png", "tensorboard")
# What only a run that recorded its config writes (a start that failed before leaves at most
# a tokenizer and compiled programs).
RUN_FILES = ("metrics.jsonl", "checkpoints", "pretrain_ckpt")
ConfigMismatchError = WorkdirMismatchError  # the name earlier releases raised


def iteration_dir(workdir: epath.PathLike, n: int, *parts: str) -> epath.Path:
  """``WORKDIR/iter_NNN/parts...``: what iteration ``n`` writes."""
  return epath.Path(workdir).joinpath(f"iter_{n:03d}", *parts)


def is_resume(config: Config, workdir: epath.PathLike) -> bool:
  """True when ``workdir`` holds this config's run; raises ``WorkdirMismatchError`` naming
  the keys that differ when it holds another's, or when it holds a run's files without the
  config.json that says whose they are. Writes nothing."""
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    found = [name for name in RUN_FILES if (epath.Path(workdir) / name).exists()]
    if found:  # put there by hand: whose config they were run with is unknown
      raise WorkdirMismatchError(
          f"{workdir} holds a run's {', '.join(found)} but no config.json, so whether they are "
          "this config's run is unknown; nothing was changed. To resume that run, copy its "
          "config.json there too; to start from its model, use an empty --workdir with "
          "--config.model.checkpoint=RUN/checkpoints/N --config.pretrain.steps=0; --overwrite "
          "deletes them and starts over.")
    return False
  recorded = read_json(path, WorkdirMismatchError)  # unreadable: one line, nothing changed
  old, new = flatten(recorded), flatten(to_dict(config))
  # A key a later release declared is absent from an earlier run's record; at its default it
  # keeps that release's behaviour, so the run resumes.
  missing = set(new) - set(old)
  defaults = flatten(to_dict(load(base_config(config.task)))) if missing else {}
  old.update({k: new[k] for k in missing if k in defaults and new[k] == defaults[k]})
  diff = sorted(k for k in set(old) | set(new)
                if k not in OPERATIONAL_KEYS and old.get(k, "<unset>") != new.get(k, "<unset>"))
  if diff:
    lines = [f"  {k}: {old.get(k, '<unset>')!r} (recorded) -> {new.get(k, '<unset>')!r}"
             for k in diff]
    raise WorkdirMismatchError(
        f"{workdir} holds a run with a different config; resuming would mix results:\n"
        + "\n".join(lines) + "\nUse another --workdir, or pass --overwrite to delete the "
        "earlier run's artifacts and start over.")
  return True


def record_config(config: Config, workdir: epath.PathLike) -> None:
  """Writes config.json: from here on the workdir holds this run."""
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  if is_primary():
    write_atomic(epath.Path(workdir) / "config.json",
                 json.dumps(to_dict(config), indent=2, sort_keys=True))
  barrier("config recorded")  # no process reads the workdir before every process checked it


def clear(workdir: epath.PathLike) -> None:
  """Deletes a previous run's artifacts (only the files a run writes)."""
  workdir = epath.Path(workdir)
  if not is_primary() or not workdir.is_dir():
    return
  for path in workdir.iterdir():
    if path.name in ARTIFACTS or path.name.startswith(("iter_", "tokenizer.", "accuracy_by_")):
      path.rmtree() if path.is_dir() else path.unlink()


def finished_iterations(workdir: epath.PathLike) -> list[int]:
  path = epath.Path(workdir) / "metrics.jsonl"
  done = [r.get("iteration") for r in read_jsonl(path, WorkdirMismatchError)]
  bad = [i for i in done if type(i) is not int or i < 0]  # noqa: E721 (True is no iteration)
  if bad:
    raise WorkdirMismatchError(f"{path}: iteration {bad[0]!r} is not a whole number >= 0; "
                               "nothing was changed (--overwrite starts the run over)")
  return done


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
