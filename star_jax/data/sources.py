"""The official jsonl files: where they live, how each line is checked and parsed.

Both the TFDS builders and the plain-jsonl path read through `read_jsonl`, so a
bad line fails the same way everywhere: `DataFormatError("<file>:<line>: why")`.
A record is a flat dict of str / int / list[str], the shape TFDS features store.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import urllib.request
from typing import Any, Callable

from star_jax.runtime.errors import DataError, MissingFileError


class DataFormatError(DataError):
  """A line of a source file is malformed; the message starts with "file:line:"."""


def _field(obj: dict, key: str, kind: type, where: str = "") -> Any:
  if key not in obj:
    raise ValueError(f"missing field '{where}{key}'")
  if not isinstance(obj[key], kind):
    raise ValueError(f"field '{where}{key}' must be {kind.__name__}, got {type(obj[key]).__name__}")
  return obj[key]


def parse_commonsense_qa(obj: dict, lineno: int, split: str) -> dict:
  """Official CommonsenseQA line -> record; the answer key must be a choice label."""
  del split  # ids come from the file
  q = _field(obj, "question", dict)
  labels, texts = [], []
  for j, choice in enumerate(_field(q, "choices", list, "question.")):
    if not isinstance(choice, dict):
      raise ValueError(f"question.choices[{j}] must be an object")
    labels.append(_field(choice, "label", str, f"question.choices[{j}].").strip())
    texts.append(_field(choice, "text", str, f"question.choices[{j}].").strip())
  if len(labels) < 2:
    raise ValueError(f"expected at least 2 choices, got {len(labels)}")
  if len(set(labels)) != len(labels):
    raise ValueError(f"duplicate choice labels {labels}")
  key = _field(obj, "answerKey", str).strip()
  if key not in labels:
    raise ValueError(f"answer key {key!r} is not among the choice labels {labels}")
  concept = q.get("question_concept", "")
  return {
      "index": lineno,
      "id": _field(obj, "id", str),
      "question": _field(q, "stem", str, "question.").strip(),
      "concept": concept if isinstance(concept, str) else "",
      "choice_labels": labels,
      "choice_texts": texts,
      "answer_key": key,
  }


# What may follow "####": an integer or decimal, maybe signed, with thousands commas.
_GSM8K_FINAL = re.compile(r"^-?\$?\s*(\d{1,3}(,\d{3})+|\d+)(\.\d+)?$")


def parse_gsm8k(obj: dict, lineno: int, split: str) -> dict:
  """Official GSM8K line -> record; `answer` is the text after the last "####"."""
  solution = _field(obj, "answer", str)
  if "####" not in solution:
    raise ValueError("field 'answer' has no '####' final-answer marker")
  final = solution.rsplit("####", 1)[1].strip()
  if not _GSM8K_FINAL.match(final):
    raise ValueError(f"final answer after '####' is not a number: {final!r}")
  return {
      "index": lineno,
      "id": f"gsm8k-{split}-{lineno:05d}",  # GSM8K has no ids: line numbers are stable
      "question": _field(obj, "question", str).strip(),
      "solution": solution,
      "answer": final,
  }


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """One dataset's official files. `files` maps a TFDS split name to a file name."""

  name: str
  title: str
  files: dict[str, str]
  eval_split: str  # the split the STaR loop evaluates on
  url_prefix: str
  homepage: str
  parse: Callable[[dict, int, str], dict]


SOURCES: dict[str, SourceSpec] = {
    "commonsense_qa": SourceSpec(
        name="commonsense_qa", title="CommonsenseQA",
        files={"train": "train_rand_split.jsonl", "validation": "dev_rand_split.jsonl"},
        eval_split="validation",
        url_prefix="https://s3.amazonaws.com/commensenseqa/",
        homepage="https://www.tau-nlp.sites.tau.ac.il/commonsenseqa",
        parse=parse_commonsense_qa),
    "gsm8k": SourceSpec(
        name="gsm8k", title="GSM8K",
        files={"train": "train.jsonl", "test": "test.jsonl"},
        eval_split="test",
        url_prefix="https://raw.githubusercontent.com/openai/grade-school-math/master/"
                   "grade_school_math/data/",
        homepage="https://github.com/openai/grade-school-math",
        parse=parse_gsm8k),
}


def read_jsonl(path: str, parse: Callable[[dict, int, str], dict], split: str) -> list[dict]:
  """Parses every non-blank line of `path`; any bad line raises DataFormatError."""
  records = []
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      try:
        line = raw.decode("utf-8")
        if not line.strip():
          continue  # a trailing blank line is not data
        obj = json.loads(line)
        if not isinstance(obj, dict):
          raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
        records.append(parse(obj, lineno, split))
      except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}:{lineno}: not valid UTF-8 ({e.reason})") from e
      except json.JSONDecodeError as e:
        raise DataFormatError(
            f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from e
      except RecursionError:
        raise DataFormatError(f"{path}:{lineno}: JSON nested too deeply to read") from None
      except ValueError as e:
        raise DataFormatError(f"{path}:{lineno}: {e}") from e
  return records


def ensure_files(spec: SourceSpec, src_dir: str, download: bool = True,
                 timeout_s: float = 30.0) -> dict[str, str]:
  """Paths of all of `spec`'s files in `src_dir`, downloading missing ones if allowed.

  Raises FileNotFoundError naming every missing file, the directory to put it in
  and where to get it, plus why the download did not help.
  """
  paths = {split: os.path.join(src_dir, fname) for split, fname in spec.files.items()}
  missing = [s for s, p in paths.items() if not os.path.isfile(p)]
  if not missing:
    return paths
  problems = []
  if download:
    for split in missing:
      url = spec.url_prefix + spec.files[split]
      try:
        _download(url, paths[split], timeout_s)
      except Exception as e:  # any network failure: report it, never hang the loop on it
        problems.append(f"downloading {url} failed: {type(e).__name__}: {e}")
    missing = [s for s, p in paths.items() if not os.path.isfile(p)]
    if not missing:
      return paths
  else:
    problems.append("download disabled (data.download=False)")
  names = ", ".join(spec.files[s] for s in missing)
  urls = ", ".join(spec.url_prefix + spec.files[s] for s in missing)
  raise MissingFileError(
      f"{spec.title} data not found: put {names} into {os.path.abspath(src_dir)} (config "
      f"data.dir). They are the official release files ({spec.homepage}; {urls}). "
      + "; ".join(problems))


def _download(url: str, path: str, timeout_s: float) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with urllib.request.urlopen(url, timeout=timeout_s) as resp:
    data = resp.read()
  tmp = f"{path}.download"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)  # never leave a half-written file that looks complete
