"""Declared config keys: a frozen dataclass field with its default and a one-line comment.

Every key of a run's config is declared once, as such a field, in the layer that reads
it (``data.DataConfig``, a task's ``Options``, ``config.schema``); the config loader
checks keys and choices against the declarations and ``config.reference`` prints them.
"""

from __future__ import annotations

import dataclasses


def key(default, doc: str, choices: tuple | None = None):
  """A declared key: its default, its comment and (optionally) the values it may take."""
  metadata = {"doc": doc, "choices": choices}
  if isinstance(default, (dict, list)):  # a fresh copy per instance
    return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)


def group(cls, doc: str):
  """A declared group of keys (a nested frozen dataclass) at its defaults."""
  return dataclasses.field(default_factory=cls, metadata={"doc": doc, "choices": None})
