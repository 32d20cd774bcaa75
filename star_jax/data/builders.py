"""TFDS builders for CommonsenseQA and GSM8K that work without TensorFlow.

The builders read the official jsonl files from `data.dir`, write ArrayRecord
files (the only TFDS format that needs no TensorFlow) and are read back with
`as_data_source()` for random access. `_info` builds `tfds.core.DatasetInfo`
directly because TFDS's default path goes through TensorFlow.

Prepared data lives in `<data.tfds_dir or data.dir/tfds>/<fingerprint>/`, where
the fingerprint hashes the source files: editing or replacing a source file
prepares a fresh copy instead of silently serving stale data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from star_jax.data.data_config import DataConfig
from star_jax.runtime.errors import ConfigError, MissingFileError
from star_jax.data.sources import SOURCES, SourceSpec, ensure_files, read_jsonl

_Text = tfds.features.Text


class _LocalDatasetInfo(tfds.core.DatasetInfo):
  """DatasetInfo for a dataset built from local files only.

  A builder whose data is not yet prepared asks TFDS's GCS bucket for pre-computed info;
  TFDS 4.9 makes a temporary folder in /tmp for it before looking and never removes it, one
  leaked ``/tmp/tmp*tfds`` per preparation. These datasets are never in the bucket.
  """

  def initialize_from_bucket(self) -> None:
    return None


class _JsonlBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared builder: one split per official file, keyed by line number.

  skip_registration: these are constructed explicitly with the source paths,
  and registering them would clash on module reloads.
  """

  VERSION = tfds.core.Version("1.0.0")
  SPEC: SourceSpec
  # TFDS 4.9.10 finds a builder's source file through `importlib_resources`, a
  # package it declares only for Python < 3.9, so for a builder inside a package
  # that lookup raises ModuleNotFoundError. Naming the file here skips it.
  code_path = epath.Path(__file__)

  def __init__(self, *, src_paths: dict[str, str], **kwargs: Any):
    self._src_paths = dict(src_paths)
    super().__init__(**kwargs)

  def _features(self) -> dict[str, Any]:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return _LocalDatasetInfo(
        builder=self,
        description=f"{self.SPEC.title}, official jsonl release, parsed for star_jax.",
        features=tfds.features.FeaturesDict(self._features()),
        homepage=self.SPEC.homepage,
    )

  # TFDS prints these two to stdout, where the commands' reports go (the pre-flight's JSON
  # line, export's file list); they are progress, so they go to the log.
  def _log_download_bytes(self) -> None:
    logging.info("preparing %s from %s into %s (TFDS, ArrayRecord)", self.name,
                 ", ".join(sorted(set(self._src_paths.values()))), self.data_dir)

  def _log_download_done(self) -> None:
    logging.info("prepared %s in %s", self.name, self.data_dir)

  def _split_generators(self, dl_manager):
    del dl_manager  # the files are local (see sources.ensure_files)
    return {split: self._generate_examples(split) for split in self._src_paths}

  def _generate_examples(self, split: str):
    # read_jsonl validates every line before anything is yielded, so a bad line
    # fails the whole preparation with its file and line number.
    for record in read_jsonl(self._src_paths[split], self.SPEC.parse, split):
      yield record["index"], record


class CommonsenseQABuilder(_JsonlBuilder, skip_registration=True):
  name = "star_commonsense_qa"
  SPEC = SOURCES["commonsense_qa"]

  def _features(self):
    return {
        "index": tfds.features.Scalar(dtype=np.int64, doc="1-based line in the source file"),
        "id": _Text(), "question": _Text(), "concept": _Text(),
        "choice_labels": tfds.features.Sequence(_Text()),
        "choice_texts": tfds.features.Sequence(_Text()),
        "answer_key": _Text(),
    }


class Gsm8kBuilder(_JsonlBuilder, skip_registration=True):
  name = "star_gsm8k"
  SPEC = SOURCES["gsm8k"]

  def _features(self):
    return {
        "index": tfds.features.Scalar(dtype=np.int64, doc="1-based line in the source file"),
        "id": _Text(), "question": _Text(),
        "solution": _Text(doc="worked solution; never shown as a hint"),
        "answer": _Text(doc="final answer after ####"),
    }


BUILDERS: dict[str, type[_JsonlBuilder]] = {
    "commonsense_qa": CommonsenseQABuilder,
    "gsm8k": Gsm8kBuilder,
}


def _fingerprint(paths: dict[str, str]) -> str:
  h = hashlib.sha256()
  for split in sorted(paths):
    h.update(split.encode())
    with open(paths[split], "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
  return h.hexdigest()[:16]


def source_paths(source: str, data: DataConfig) -> dict[str, str]:
  """Paths of `source`'s official files in `data.dir`, downloading them if allowed; with
  `data.holdout`, only the train file (`data.train_file`, or the official one in dir)."""
  if source not in SOURCES:
    raise ValueError(f"unknown data source {source!r}; known: {sorted(SOURCES)}")
  train_file = data.train_file
  if data.holdout and train_file:
    if not os.path.isfile(train_file):
      raise MissingFileError(f"data.train_file {train_file!r} does not exist (the official "
                              f"{SOURCES[source].title} train file: {SOURCES[source].homepage})")
    return {"train": train_file}
  if train_file:
    raise ConfigError("data.train_file is read with data.holdout > 0 (the eval set is then "
                     "held out of it); without it, put the official files in data.dir")
  src_dir = data.dir
  if not src_dir:
    raise ConfigError(f"data.dir must name the directory holding the {SOURCES[source].title} files")
  return ensure_files(SOURCES[source], src_dir, download=data.download,
                      timeout_s=data.download_timeout_s)


def tfds_root(data: DataConfig) -> str:
  """Where TFDS writes: ``data.tfds_dir``; else ``<data.dir>/tfds`` beside the official files;
  else (a ``data.train_file`` held out from) the user's cache, ``~/.cache/star_jax/tfds``:
  never a stray folder in the current directory."""
  if data.tfds_dir:
    return data.tfds_dir
  if not (data.holdout and data.train_file):  # the official files, in data.dir
    return os.path.join(data.dir, "tfds")
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(cache, "star_jax", "tfds")


def make_builder(source: str, data: DataConfig) -> _JsonlBuilder:
  """The TFDS builder for `source` over `data.dir`'s files (not yet prepared)."""
  paths = source_paths(source, data)
  return BUILDERS[source](src_paths=paths,
                          data_dir=os.path.join(tfds_root(data), _fingerprint(paths)),
                          file_format="array_record")


def _decode(value: Any) -> Any:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, (list, tuple, np.ndarray)):
    return [_decode(v) for v in value]
  if isinstance(value, np.integer):
    return int(value)
  return value


def load_records(source: str, split: str, data: DataConfig) -> list[dict]:
  """All records of one split ('train' or 'eval'), in source-file order.

  Goes through the TFDS builder (prepared once, then read back from ArrayRecord);
  `data.use_tfds=False` reads the jsonl directly instead, with the same checks. With
  `data.holdout = N` the eval split is N train records chosen by `data.seed` and the
  train split the rest (for releases whose eval split has no answers, or none at hand).
  """
  if source not in SOURCES:
    raise ValueError(f"unknown data source {source!r}; known: {sorted(SOURCES)}")
  spec = SOURCES[source]
  if split not in ("train", "eval"):
    raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
  holdout = int(data.holdout)
  if holdout:
    return _held_out(_read("train", spec, source, data), split, holdout,
                     data.seed)
  return _read(spec.eval_split if split == "eval" else "train", spec, source, data)


def _held_out(records: list[dict], split: str, holdout: int, seed: int) -> list[dict]:
  """The eval set: ``holdout`` train records chosen by the seed; train: the rest (disjoint)."""
  if holdout >= len(records):
    raise ConfigError(f"data.holdout={holdout} leaves nothing to train on ({len(records)} "
                     "train records)")
  chosen = set(np.random.default_rng([seed, 17]).choice(len(records), holdout,
                                                        replace=False).tolist())
  return [r for i, r in enumerate(records) if (i in chosen) == (split == "eval")]


def _read(tfds_split: str, spec: SourceSpec, source: str, data: DataConfig) -> list[dict]:
  if not data.use_tfds:
    paths = source_paths(source, data)
    return read_jsonl(paths[tfds_split], spec.parse, tfds_split)
  paths = source_paths(source, data)
  root = tfds_root(data)
  made = [d for d in (root, os.path.join(root, _fingerprint(paths))) if not os.path.exists(d)]
  try:
    builder = make_builder(source, data)
    builder.download_and_prepare()
  except BaseException:
    for d in reversed(made):  # a failed build (a malformed line, a kill) leaves no skeleton
      shutil.rmtree(d, ignore_errors=True)
    raise
  ds = builder.as_data_source(split=tfds_split)
  rows = [{k: _decode(v) for k, v in row.items()} for row in ds.__getitems__(range(len(ds)))]
  # ArrayRecord shuffles by key hash; the line number restores the file order.
  return sorted(rows, key=lambda r: r["index"])
