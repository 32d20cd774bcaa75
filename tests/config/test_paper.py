"""The paper's run by name (``configs/cqa.py:paper``, ``configs/gsm8k.py:paper``): GPT-J 6B by
its hub id on a TPU slice's mesh; the same code path with random tiny GPT-J weights runs end to
end here, and its plan reads the published config when the checkpoint is not at hand."""

import pytest

from helpers.runs import load_config, write_cqa
from star_jax import config as config_lib, star


@pytest.mark.parametrize("task", ["cqa", "gsm8k"])
def test_the_paper_variants_name_gptj_by_hub_id_with_the_papers_settings(task):
  c = config_lib.load(load_config(task, "paper"))
  assert c.model.checkpoint == "EleutherAI/gpt-j-6b" and c.model.dtype == "bfloat16"
  assert (c.train.batch_size, c.train.grad_accum, c.train.learning_rate) == (8, 1, 1e-6)
  assert (c.star.steps_schedule, c.star.base_steps, c.star.steps_growth) == ("exponential", 40, 1.2)
  assert c.star.temperature == 0.0
  assert c.star.restart_from_base and c.star.few_shot and c.sample.layout == "tensor"
  assert (c.mesh.data, c.mesh.fsdp) == (1, -1)
  assert c.model.overrides["scan_layers"] and c.model.overrides["remat"]


def test_the_paper_variant_runs_end_to_end_with_tiny_gptj_weights(tmp_path):
  """Same code path (bfloat16 with float32 masters, fsdp over the 8 devices, scanned remat
  layers, tensor-parallel sampling), random tiny GPT-J weights, a few questions."""
  write_cqa(str(tmp_path / "data"))
  c = load_config("cqa", "paper")
  c.model.checkpoint, c.model.preset = "", "tiny-gptj"
  c.model.overrides = dict(c.model.overrides, max_seq_len=1024)
  c.tokenizer.vocab_size = 512
  c.data.dir, c.data.download = str(tmp_path / "data"), False
  c.data.max_train, c.data.max_eval = 8, 4
  c.star.iterations, c.star.base_steps, c.star.max_new_tokens = 1, 2, 8
  c.train.seq_len = 1024
  metrics = star.run(c, tmp_path / "run")
  assert [m["iteration"] for m in metrics] == [0, 1] and metrics[-1]["eval_n"] == 4


def test_the_plan_of_the_paper_reads_the_published_config_offline(monkeypatch, tmp_path):
  from star_jax import plan
  monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  name, cfg = plan.model_config_of(config_lib.load(load_config("cqa", "paper")))
  assert name == "EleutherAI/gpt-j-6b"
  assert (cfg.num_layers, cfg.d_model, cfg.vocab_size) == (28, 4096, 50400)
  assert cfg.param_dtype == "bfloat16" and cfg.scan_layers and cfg.remat


def test_the_paper_plan_fits_a_v4_8_by_the_tpu_compiler(monkeypatch, tmp_path):
  """The real ``:paper`` config (GPT-J 6B from its published config, full fine-tuning in
  bfloat16 with float32 masters, fsdp over 4 chips, scanned remat layers) compiled by libtpu
  for a v4-8: its train step fits a chip of 32 GiB (docs/scale.md, docs/plan.md: 24.5 GiB)."""
  import importlib.util
  if importlib.util.find_spec("libtpu") is None:
    pytest.skip("needs libtpu (pip install -e '.[tpu]'; .ci/run installs it)")
  from star_jax import plan
  monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  r = plan.plan(load_config("cqa", "paper"), device_memory_gib=None, topology="v4:2x2x1",
                train_only=True, cost=False)
  assert r["compiler"].startswith("TPU compiler (libtpu") and r["devices"] == 4
  assert r["chip"]["hbm_gib"] == 32 and r["fits"]
  (train,) = r["programs"]
  assert train["total"] == pytest.approx(24.5, abs=0.6), train
