"""Atomic artifact files: a reader (or a resumed run) never sees half a file.

In a multi-host run only process 0 writes (every process computes the same text).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Iterable

from star_jax.runtime.distributed import is_primary


def write_atomic(path: str, text: str) -> None:
  """Writes via a temporary file and a rename (process 0 only)."""
  if not is_primary():
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_jsonl(path: str, records: Iterable[dict]) -> None:
  write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
