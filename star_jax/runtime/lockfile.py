"""The lock file of a workdir, as the object its store can change atomically: a local file
(``O_EXCL``-style creation by a hard link, a rename that only one process wins) or a ``gs://``
object (google-cloud-storage's generation preconditions). ``experiment/lock.py`` decides who
holds a workdir; this module only reads, creates, replaces and removes the file exactly.

Each has the same five operations: ``create(text)`` (False when a lock exists), ``read()``
(the record and its version), ``replace(version, text)`` (False when the lock is no longer that
version), ``renew(token, text)`` (False when the lock is not the token's) and
``remove(token)``.
"""

from __future__ import annotations

import json
import os
import uuid

from etils import epath

from star_jax.runtime.errors import UserError


class LocalLockFile:
  """The lock file on a local (or mounted) disk. A version is the file's inode and bytes: a
  lock replaced by another process is another file, with another token in it (an inode alone
  is reused as soon as it is freed)."""

  def __init__(self, path: epath.Path):
    self.path = path

  def create(self, text: str) -> bool:
    """Creates the lock, whole, if there is none: written to a file of its own, then linked
    to the lock's name (atomic, never over an existing lock; no reader sees it half-written)."""
    tmp = self.path.parent / f".{self.path.name}.new-{uuid.uuid4().hex}"
    tmp.write_text(text)
    try:
      os.link(tmp, self.path)
      return True
    except FileExistsError:
      return False
    finally:
      os.unlink(tmp)

  def read(self) -> tuple[dict, object]:
    """(the lock's record, its version): ({}, None) when there is none; a record of {} when it
    is unreadable (a heartbeat caught mid-write, or debris)."""
    return _read_file(self.path)

  def replace(self, version: object, text: str) -> bool:
    """Replaces the lock of ``version`` by a new one holding ``text``; False (nothing
    replaced) when the lock is another by now, or another process replaced it first."""
    if version is None:  # there was none
      return self.create(text)
    aside = self.path.parent / f".{self.path.name}.stale-{uuid.uuid4().hex}"
    try:
      os.rename(self.path, aside)  # one rename of a given file wins
    except FileNotFoundError:
      return False
    _, moved = _read_file(aside)
    if moved != version:  # another launcher's fresh lock was moved: put it back
      _put_back(aside, self.path)
      return False
    os.unlink(aside)
    return self.create(text)

  def renew(self, token: str, text: str) -> bool:
    """Rewrites the lock in place if it holds ``token``; False when it is another's (or gone).
    The check and the write go through one open file, so a lock taken over in between is
    never written: the write lands in the file that was moved aside."""
    try:
      with open(self.path, "r+b") as f:
        if _record(f.read()).get("token") != token:
          return False
        data = text.encode("utf-8")
        f.seek(0)
        f.write(data)
        f.truncate(len(data))
        return True
    except FileNotFoundError:
      return False

  def remove(self, token: str) -> None:
    """Deletes the lock if it holds ``token``."""
    aside = self.path.parent / f".{self.path.name}.released-{uuid.uuid4().hex}"
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return
    held, _ = _read_file(aside)
    if held.get("token") == token:
      os.unlink(aside)
    else:  # another's lock
      _put_back(aside, self.path)


def _read_file(path: epath.Path) -> tuple[dict, object]:
  try:
    with open(path, "rb") as f:
      data = f.read()
      version = (os.fstat(f.fileno()).st_ino, data)
  except OSError:
    return {}, None
  return _record(data), version


def _record(data: bytes) -> dict:
  """A lock's JSON record; {} when the bytes are not one (half-written, or debris)."""
  try:
    held = json.loads(data.decode("utf-8"))
  except ValueError:
    return {}
  return held if isinstance(held, dict) else {}


def _put_back(aside: epath.Path, path: epath.Path) -> None:
  """A lock moved aside by mistake, back in place (unless a new one was made meanwhile)."""
  try:
    os.link(aside, path)
  except FileExistsError:
    pass
  os.unlink(aside)


class GcsLockFile:
  """The lock object in a ``gs://`` bucket. A version is the object's generation; every
  change is conditional on it (google-cloud-storage's preconditions), so of two writers that
  read the same generation exactly one wins."""

  def __init__(self, path: epath.Path, client=None):
    self.path = path
    bucket, _, name = str(path).split("://", 1)[1].partition("/")
    if client is None:
      try:
        from google.cloud import storage  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise UserError(f"a gs:// workdir ({path.parent}) needs google-cloud-storage for its "
                        "lock: pip install 'star_jax[gcs]'") from e
      client = storage.Client()
    self._bucket = client.bucket(bucket)
    self._name = name

  def _failed_precondition(self, e: Exception) -> bool:
    return getattr(e, "code", None) == 412 or type(e).__name__ in ("PreconditionFailed",
                                                                   "NotFound")

  def create(self, text: str) -> bool:
    try:
      self._bucket.blob(self._name).upload_from_string(text, if_generation_match=0)
      return True
    except Exception as e:  # noqa: BLE001 - google.api_core's errors, sorted here
      if self._failed_precondition(e):
        return False
      raise

  def read(self) -> tuple[dict, object]:
    blob = self._bucket.get_blob(self._name)
    if blob is None:
      return {}, None
    try:
      data = blob.download_as_bytes(if_generation_match=blob.generation)
    except Exception as e:  # noqa: BLE001
      if self._failed_precondition(e):  # replaced or deleted since: read again
        return self.read()
      raise
    return _record(data), blob.generation

  def replace(self, version: object, text: str) -> bool:
    if version is None:
      return self.create(text)
    try:
      self._bucket.blob(self._name).upload_from_string(text, if_generation_match=version)
      return True
    except Exception as e:  # noqa: BLE001
      if self._failed_precondition(e):
        return False
      raise

  def renew(self, token: str, text: str) -> bool:
    held, version = self.read()
    return held.get("token") == token and self.replace(version, text)

  def remove(self, token: str) -> None:
    held, version = self.read()
    if held.get("token") != token:
      return
    try:
      self._bucket.blob(self._name).delete(if_generation_match=version)
    except Exception as e:  # noqa: BLE001
      if not self._failed_precondition(e):
        raise


def lock_file(path: epath.Path):
  return GcsLockFile(path) if str(path).startswith("gs://") else LocalLockFile(path)
