"""The boundary: a ``configs/*.py`` ConfigDict (or a dict) in, a validated ``Config`` out.

Every key is checked against its declaration (``schema.py``, ``data.DataConfig``, the
task's ``Options``, ``engine.ModelConfig`` for ``model.overrides``): an unknown key is a
``ConfigError`` naming it and the nearest valid one, a value outside its choices names
them. Nothing below this module reads a ConfigDict.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from star_jax.config.schema import Config, PretrainConfig, TrainConfig
from star_jax.data.data_config import DataConfig
from star_jax.engine.model_config import ModelConfig
from star_jax.runtime.errors import ConfigError, did_you_mean
from star_jax.tasks import make_options, task_class

_MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}
_NUMBER = (int, float)


def load(config: Any) -> Config:
  """``config`` (a ConfigDict, a dict or a ``Config``) as a validated ``Config``."""
  if isinstance(config, Config):
    return config
  values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  cfg = _build(Config, values, "")
  cls = task_class(cfg.task)
  options = make_options(cls, cfg.task_options, "task_options")
  make_options(cls, cfg.pretrain.task_options, "pretrain.task_options")
  make_options(cls, cfg.pretrain.hinted_task_options, "pretrain.hinted_task_options")
  _check_keys(cfg.pretrain.data, {f.name for f in dataclasses.fields(DataConfig)},
              "pretrain.data")
  seed_train(cfg)  # pretrain.train's keys and types
  _check_curriculum(cfg.star.curriculum)
  _check_keys(cfg.model.overrides, _MODEL_FIELDS, "model.overrides")
  return dataclasses.replace(cfg, task_options=options)


def to_dict(cfg: Config) -> dict[str, Any]:
  """``cfg`` as plain JSON values (what a workdir's config.json records)."""
  return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"star.iterations": 10, ...}: nested dicts as dotted keys."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict) and v:
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def seed_data(cfg: Config) -> DataConfig:
  """The seed set P's data keys: the run's, with ``pretrain.data``'s changes."""
  return dataclasses.replace(cfg.data, **_typed(DataConfig, cfg.pretrain.data, "pretrain.data"))


def seed_train(cfg: Config) -> TrainConfig:
  """The warm start's train keys: the run's, with ``pretrain.train``'s changes and
  ``pretrain.learning_rate`` (when set)."""
  train = dataclasses.replace(cfg.train,
                              **_typed(TrainConfig, cfg.pretrain.train, "pretrain.train"))
  if cfg.pretrain.learning_rate > 0:
    train = dataclasses.replace(train, learning_rate=cfg.pretrain.learning_rate)
  return train


def _check_curriculum(tops: tuple) -> None:
  if any(not isinstance(t, int) or isinstance(t, bool) or t < 1 for t in tops) or any(
      b < a for a, b in zip(tops, tops[1:])):
    raise ConfigError(f"star.curriculum must be whole numbers >= 1 that never decrease (the "
                      f"hardest difficulty each iteration draws), got {tuple(tops)}")


def _check_keys(values: dict, known: set[str], where: str) -> None:
  for k in values:
    if k not in known:
      raise ConfigError(f"unknown config key {where}.{k}{did_you_mean(k, known)}")


def _typed(cls, values: dict, where: str) -> dict[str, Any]:
  """``values`` checked against ``cls``'s declared fields and converted to their types."""
  fields = {f.name: f for f in dataclasses.fields(cls)}
  _check_keys(values, set(fields), where)
  return {k: _value(fields[k], v, f"{where}.{k}") for k, v in values.items()}


def _build(cls, values: dict, where: str):
  fields = {f.name: f for f in dataclasses.fields(cls)}
  prefix = f"{where}." if where else ""
  for k in values:
    if k not in fields:
      raise ConfigError(f"unknown config key {prefix}{k}{did_you_mean(k, fields)}; every key "
                        "is declared in star_jax/config/schema.py (docs/config.md)")
  out = {}
  for k, v in values.items():
    f = fields[k]
    factory = f.default_factory
    if factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory):
      if not isinstance(v, dict):
        raise ConfigError(f"{prefix}{k} is a group of keys, got {v!r}")
      out[k] = _build(factory, v, f"{prefix}{k}")
    else:
      out[k] = _value(f, v, f"{prefix}{k}")
  return cls(**out)


def _value(f: dataclasses.Field, v: Any, where: str) -> Any:
  """``v`` as the type of ``f``'s default; its choices checked."""
  default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
  if isinstance(default, dict):
    if not isinstance(v, dict):
      raise ConfigError(f"{where} must be a group of keys, got {v!r}")
    return {k: tuple(x) if isinstance(x, list) else x for k, x in v.items()}
  if isinstance(default, tuple):
    if not isinstance(v, (list, tuple)):
      raise ConfigError(f"{where} must be a list, got {v!r}")
    v = tuple(v)
  elif isinstance(default, bool):
    if not isinstance(v, bool):
      raise ConfigError(f"{where} must be True or False, got {v!r}")
  elif isinstance(default, _NUMBER):
    if isinstance(v, bool) or not isinstance(v, _NUMBER):
      raise ConfigError(f"{where} must be a number, got {v!r}")
    if not math.isfinite(v):  # config.json could not record it and read it back
      raise ConfigError(f"{where} must be a finite number, got {v!r}")
    if isinstance(default, int) and v != int(v):
      raise ConfigError(f"{where} must be a whole number, got {v!r}")
    v = type(default)(v)
  elif isinstance(default, str) and not isinstance(v, str):
    raise ConfigError(f"{where} must be a string, got {v!r}")
  choices = f.metadata.get("choices")
  if choices and v not in choices:
    raise ConfigError(f"{where} must be one of {list(choices)}, got {v!r}"
                      f"{did_you_mean(str(v), [str(c) for c in choices])}")
  return v


__all__ = ["Config", "PretrainConfig", "flatten", "load", "seed_data", "seed_train", "to_dict"]
