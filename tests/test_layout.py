"""The package's layout rules, read from the source: rooms import only rooms below them.

  runtime  <  engine, tokenizer, data  <  sampling, tasks  <  hub  <  config  <  experiment
           <  star  <  the command-line tools (main, preflight, plan, generate, export,
           verify)

Benchmarks live outside the package (top-level ``benchmarks/``) and nothing in it imports them.

No import cycles; the engine and sampling know no task, loop, checkpoint format or tokenizer;
no module imports another's private names; no module over 400 lines; main.py stays thin; the
generic loop names no task and never probes a task with hasattr.
"""

import ast
import collections
import os

import pytest

PKG = "star_jax"
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PKG)
# Room -> the rooms it may import from (besides itself and runtime).
ALLOWED = {
    "runtime": set(),
    "engine": set(),
    "tokenizer": set(),
    "data": set(),
    "sampling": {"engine"},
    "tasks": {"data"},
    "hub": {"engine", "tokenizer"},
    "config": {"engine", "data", "tasks"},
    "experiment": {"engine", "sampling", "tokenizer", "data", "tasks", "hub", "config"},
    "star": {"engine", "sampling", "tokenizer", "data", "tasks", "hub", "config", "experiment"},
    "main": {"star"},
    "preflight": {"config", "experiment", "sampling", "star", "tasks"},
    "plan": {"config", "engine", "experiment", "hub", "sampling", "star"},
    "generate": {"engine", "experiment", "sampling", "tokenizer", "hub"},
    "export": {"engine", "experiment", "hub"},
    "verify": {"config", "experiment", "hub", "sampling", "star"},
}
TASK_NAMES = ("arithmetic", "cqa", "gsm8k", "digits", "scratchpad")


def _modules() -> dict[str, str]:
  out = {}
  for d, _, files in os.walk(SRC):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(d, f)
        rel = os.path.relpath(path, os.path.dirname(SRC))[:-3].replace(os.sep, ".")
        out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
  return out


MODULES = _modules()


def _imports(module: str) -> list[tuple[str, str]]:
  """(imported module, imported name or "") of every star_jax import, lazy ones included."""
  tree = ast.parse(open(MODULES[module]).read())
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PKG):
      for a in node.names:
        full = f"{node.module}.{a.name}"
        out.append((full, "") if full in MODULES else (node.module, a.name))
    elif isinstance(node, ast.Import):
      out += [(a.name, "") for a in node.names if a.name.startswith(PKG)]
  return out


def _room(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


def test_every_module_is_in_a_room():
  rooms = {_room(m) for m in MODULES} - {""}
  assert rooms <= set(ALLOWED), rooms - set(ALLOWED)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _room(m)))
def test_rooms_import_only_rooms_below_them(module):
  room = _room(module)
  for target, _ in _imports(module):
    other = _room(target)
    assert other in ALLOWED[room] | {room, "runtime"}, f"{module} imports {target}"


def test_no_import_cycles():
  graph = {m: {t for t, _ in _imports(m) if t in MODULES and t != m} for m in MODULES}

  def is_package_edge(a, b):  # a package's __init__ re-exporting its children
    return a.startswith(b + ".") or b.startswith(a + ".")

  state: dict[str, int] = {}

  def visit(m, path):
    state[m] = 1
    for n in graph[m]:
      if is_package_edge(m, n):
        continue
      assert state.get(n) != 1, "import cycle: " + " -> ".join(path + [n])
      if n not in state:
        visit(n, path + [n])
    state[m] = 2

  for m in sorted(MODULES):
    if m not in state:
      visit(m, [m])


def test_no_private_names_cross_modules():
  bad = [f"{m} imports {target}.{name}" for m in MODULES for target, name in _imports(m)
         if name.startswith("_") and not name.startswith("__")]
  assert not bad


def test_benchmarks_live_outside_the_package():
  root = os.path.dirname(SRC)
  assert not os.path.exists(os.path.join(SRC, "benchmarks"))
  assert os.path.isfile(os.path.join(root, "benchmarks", "star_iteration.py"))
  bad = [m for m in MODULES for t, _ in _imports(m) if t.startswith("benchmarks")]
  assert not bad


def test_no_two_modules_share_a_name():
  """A reader looking for ``plan`` or ``preflight`` finds one module, not two (``base``, a
  room's interface, is the one name rooms share)."""
  names = collections.Counter(m.rsplit(".", 1)[-1] for m, path in MODULES.items()
                              if not path.endswith("__init__.py") and not m.endswith(".base"))
  assert not [n for n, count in names.items() if count > 1]


def test_modules_stay_small_and_main_thin():
  lines = {m: open(p).read().count("\n") for m, p in MODULES.items()}
  assert not {m: n for m, n in lines.items() if n > 400}
  assert lines[f"{PKG}.main"] <= 60


def test_generic_code_names_no_task():
  """The loop, the engine and sampling read task behaviour through the Task interface."""
  for m, path in MODULES.items():
    # The defaults are the schema of every config key, task-specific data keys included.
    if _room(m) not in ("engine", "sampling", "star") or m == f"{PKG}.star.defaults":
      continue
    tree = ast.parse(open(path).read())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                  and isinstance(n.body[0], ast.Expr)
                  and isinstance(n.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
      if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "hasattr":
        assert "task" not in ast.unparse(node.args[0]), f"{m}: {ast.unparse(node)}"
      if (isinstance(node, ast.Constant) and isinstance(node.value, str)
          and id(node) not in docstrings):
        named = [t for t in TASK_NAMES if t in node.value.lower()]
        assert not named, f"{m} names {named} in {node.value!r}"


def test_readme_layout_table_matches_the_tree():
  readme = open(os.path.join(os.path.dirname(SRC), "README.md")).read()
  table = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
  for m, path in MODULES.items():
    room, name = _room(m), os.path.basename(path)
    if name == "__init__.py":
      continue
    where = f"`{room}/`" if m.count(".") > 1 else f"`{name}`"
    assert where in table, f"README's layout table does not list {where}"
    if m.count(".") > 1:
      row = next(line for line in table.splitlines() if line.startswith(f"| {where}"))
      assert f"`{name}`" in row or f"`{name[:-3]}`" in row, f"{where} row lacks {name}"


def test_nothing_below_the_config_boundary_reads_a_config_dict():
  """``config.load`` turns the ConfigDict into typed dataclasses; only it and the
  command-line tools (which define the --config flag) import ml_collections."""
  for m, path in MODULES.items():
    if _room(m) in ("config", "main", "preflight", "plan"):
      continue
    for node in ast.walk(ast.parse(open(path).read())):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      assert not any(n.startswith("ml_collections") for n in names), m
