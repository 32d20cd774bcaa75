"""Artifact files through etils.epath: whole files only, any text, str or Path alike."""

import ast
import pathlib

from etils import epath

from star_jax.runtime.files import read_jsonl, write_atomic, write_jsonl

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_jsonl_round_trip_through_epath_and_str(tmp_path):
  rows = [{"id": "a", "text": "line\u2028separator and \u00e9"}, {"id": "b", "n": 2}]
  path = epath.Path(tmp_path) / "deep" / "er" / "x.jsonl"  # parents are created
  write_jsonl(path, rows)
  assert read_jsonl(path) == rows and read_jsonl(str(path)) == rows
  write_jsonl(str(path), rows[:1])  # replaced whole
  assert read_jsonl(path) == rows[:1]
  assert [p.name for p in path.parent.iterdir()] == ["x.jsonl"]  # no temporary file left
  assert read_jsonl(tmp_path / "missing.jsonl") == []
  write_atomic(tmp_path / "t.txt", "é")
  assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "é"


def test_workdir_code_uses_epath_only():
  """star/ and experiment/ read and write the workdir, which may be gs://: no os.path, open()
  or shutil."""
  offenders = []
  for path in (sorted((ROOT / "star_jax" / "star").glob("*.py"))
               + sorted((ROOT / "star_jax" / "experiment").glob("*.py")) + [
                   ROOT / "star_jax" / "runtime" / "files.py",
                   ROOT / "star_jax" / "hub" / "checkpointer.py"]):
    for node in ast.walk(ast.parse(path.read_text())):
      name = None
      if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
        name = "open()"
      elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id in ("os", "shutil") and node.attr not in ("fsync", "environ")):
        name = f"{node.value.id}.{node.attr}"
      if name:
        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
  assert not offenders, offenders
