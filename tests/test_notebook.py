"""notebooks/star_jax_colab.ipynb runs headless (nbclient) and shows what it promises: the
metrics table, the accuracy-by-digits plot and kept rationales. It runs the `smoke` variant here;
that its default (`learn`) lifts held-out accuracy is tests/star/test_learning.py's check, on the
same config through the same `star.run` the notebook calls."""

import base64
import json
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "star_jax_colab.ipynb")


def read_notebook():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  return nb


def test_committed_notebook_has_no_outputs():
  for c in read_notebook().cells:
    if c.cell_type == "code":
      assert c.outputs == [] and c.execution_count is None, c.source[:80]


def stdout_of(cell):
  return "".join(o.text for o in cell.outputs
                 if o.output_type == "stream" and o.name == "stdout")


def cell_with(nb, text):
  (cell,) = [c for c in nb.cells if c.cell_type == "code" and text in c.source]
  return cell


def test_the_notebooks_default_is_the_config_the_learning_test_checks():
  source = cell_with(read_notebook(), "VARIANT = ").source
  assert 'VARIANT = os.environ.get("STAR_VARIANT", "learn")' in source
  learning = open(os.path.join(ROOT, "tests", "star", "test_learning.py")).read()
  assert 'load_config("arithmetic", "learn")' in learning


def test_notebook_runs_and_shows_the_runs_metrics_plot_and_rationales(tmp_path):
  nb = read_notebook()
  workdir = tmp_path / "run"
  env = dict(os.environ, STAR_WORKDIR=str(workdir), JAX_PLATFORMS="cpu", STAR_VARIANT="smoke")
  # One CPU device is faster for this tiny model than conftest's 8 fake ones.
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if not f.startswith("--xla_force_host_platform_device_count"))
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
  client.execute(env=env)  # raises CellExecutionError, with the traceback, if a cell fails

  for c in nb.cells:
    if c.cell_type == "code":
      assert not [o for o in c.outputs if o.output_type == "error"], c.source[:80]

  # Installed already: the install cell skips pip and reports where star_jax comes from.
  install = stdout_of(cell_with(nb, "%pip install"))
  assert "star_jax from " in install and "restart the kernel" not in install

  metrics = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert [m["iteration"] for m in metrics] == [0, 1, 2]
  run_log = stdout_of(cell_with(nb, "star.run(config, WORKDIR"))
  assert "iter 2 | eval acc" in run_log and "orbax" not in run_log
  table = stdout_of(cell_with(nb, "COLUMNS = ["))
  assert "eval acc" in table and "kept" in table
  assert f"{metrics[-1]['eval_accuracy']:.3f}" in table
  assert "iter |     1 |     2 |     3 |   all" in table  # report.difficulty_table

  (image,) = [o for o in cell_with(nb, "accuracy_by_digits.png").outputs
              if o.output_type == "display_data"]
  png = base64.b64decode(image.data["image/png"])
  assert png[:8] == b"\x89PNG\r\n\x1a\n"
  assert png == (workdir / "accuracy_by_digits.png").read_bytes()

  shown = stdout_of(cell_with(nb, "kept.jsonl"))
  kept = [json.loads(line) for line in open(workdir / "iter_002" / "kept.jsonl")]
  assert kept, "the run kept no rationales in its last iteration"
  assert f"iteration 2: {len(kept)} kept rationales" in shown
  for k in kept[:3]:
    assert f"--- {k['id']} ({k['source']})" in shown
    assert f"question:  {k['question']}" in shown
    assert "  " + k["rationale"].replace("\n", "\n  ") in shown
    assert f"answer:    {k['answer']}" in shown

  assert "RUN_CQA is False: skipped" in stdout_of(cell_with(nb, "RUN_CQA = False"))
