"""Atomic artifact files: a reader (or a resumed run) never sees half a file.

Paths are etils.epath paths (a str is converted): local, or gs:// where epath's GCS
backend is installed (gcsfs). A local file is written to a temporary file, synced and
renamed; on GCS an object only appears once its upload completes, and the rename
(copy, then delete) leaves either no file or the whole of it.

In a multi-host run only process 0 writes (every process computes the same text).
"""

from __future__ import annotations

import errno
import json
import os
import uuid
from typing import Any, Iterable

from etils import epath

from star_jax.runtime import failpoints
from star_jax.runtime.distributed import is_primary
from star_jax.runtime.errors import DataError, DiskFullError, UserError


def write_atomic(path: epath.PathLike, text: str) -> None:
  """Writes via a temporary file and a rename (process 0 only)."""
  write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: epath.PathLike, data: bytes, primary_only: bool = True) -> None:
  if primary_only and not is_primary():
    return
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".tmp-{uuid.uuid4().hex}-{path.name}"
  try:
    failpoints.hit(f"write_{path.name}", path)
    with tmp.open("wb") as f:
      f.write(data)
      try:
        fd = f.fileno()
      except (OSError, ValueError):  # no local file behind it (a GCS object)
        fd = None
      if fd is not None:  # on disk before the rename, even on power loss
        f.flush()
        os.fsync(fd)
    tmp.replace(path)
  except BaseException as e:
    if tmp.exists():
      tmp.unlink()
    if is_disk_full(e):
      raise disk_full(path) from e
    raise


def is_disk_full(e: BaseException | None) -> bool:
  """Whether ``e`` (or an exception it was raised from) is ENOSPC, however wrapped."""
  while e is not None:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if "No space left on device" in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


def disk_full(path: epath.PathLike, what: str = "") -> DiskFullError:
  """The one-line error for a full disk at ``path``: what was being written (the command-line
  tools add the space left there)."""
  return DiskFullError(errno.ENOSPC, f"no space left on device writing {what or path}",
                       str(path))


def write_jsonl(path: epath.PathLike, records: Iterable[dict]) -> None:
  write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def parse_json(data: bytes | str, where: str, error: type[UserError] = DataError) -> Any:
  """The JSON value of ``data``; text that is not UTF-8, not JSON or nested past the parser's
  depth is ``error`` in one line that starts with ``where``."""
  try:
    return json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
  except UnicodeDecodeError as e:
    raise error(f"{where}: not UTF-8 text (byte {e.start}: {e.reason})") from None
  except json.JSONDecodeError as e:
    raise error(f"{where}: not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
  except RecursionError:
    raise error(f"{where}: JSON nested too deeply to read") from None


def read_json(path: epath.PathLike, error: type[UserError] = DataError, kind: type = dict
              ) -> Any:
  """The JSON value in file ``path``, which must be a ``kind`` (an object, by default);
  anything else is ``error`` in one line naming the file."""
  value = parse_json(epath.Path(path).read_bytes(), str(path), error)
  if not isinstance(value, kind):
    raise error(f"{path}: expected a JSON {_JSON_NAMES.get(kind, kind.__name__)}, got "
                f"{_JSON_NAMES.get(type(value), type(value).__name__)}")
  return value


_JSON_NAMES = {dict: "object", list: "array", str: "string", type(None): "null", bool: "boolean",
               int: "number", float: "number"}


def read_jsonl(path: epath.PathLike, error: type[UserError] = DataError) -> list[dict]:
  """The JSON objects of a jsonl file, one a line ([] when there is no file); a line that is
  not one is ``error`` naming the file and the line."""
  path = epath.Path(path)
  if not path.exists():
    return []
  rows = []
  # split on newlines only: str.splitlines would also cut at a U+2028 inside a string
  for n, line in enumerate(path.read_bytes().split(b"\n"), start=1):
    if line.strip():
      row = parse_json(line, f"{path}:{n}", error)
      if not isinstance(row, dict):
        raise error(f"{path}:{n}: expected a JSON object, got "
                    f"{_JSON_NAMES.get(type(row), type(row).__name__)}")
      rows.append(row)
  return rows
