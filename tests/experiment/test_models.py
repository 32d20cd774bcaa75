"""A finished run's models load wherever a checkpoint is named, and leave star_jax.

From one CQA smoke run trained with LoRA (a tiny Llama from scratch with a SentencePiece
tokenizer built from the data): its workdir, its ``checkpoints`` and one iteration of it load
the model the run saved (adapters folded), ``generate`` continues from them, a new run starts
from them, the plan reads their architecture, and ``export`` writes a directory transformers
runs with the same logits and the same tokens.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers.reference import hf_forward, hf_logits
from helpers.runs import load_config, write_cqa
from star_jax import star
from star_jax.config import load
from star_jax.engine import lora
from star_jax.experiment.build import build
from star_jax.experiment.models import find_run, load_model, model_config_of
from star_jax.hub.checkpointer import Checkpointer
from star_jax.runtime.errors import CheckpointError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _config(data_dir, **changes):
  config = load_config("cqa")
  config.data.dir = data_dir
  config.model.lora_rank = 4
  config.star.iterations = 1
  for key, value in changes.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("lora_run")
  data_dir = str(root / "cqa")
  write_cqa(data_dir)
  workdir = str(root / "run")
  star.run(_config(data_dir), workdir)
  return data_dir, workdir


def _saved(data_dir, workdir, step):
  """What the run saved at ``step``, joined and folded by hand (the reference)."""
  exp = build(load(_config(data_dir)), workdir)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=None)
  try:
    params = ckpt.restore_model(exp.params, step=step)
  finally:
    ckpt.close()
  return lora.fold(exp.graphdef, params)


def _leaves(params):
  return [np.asarray(x) for x in jax.tree.leaves(params)]


def test_a_run_iteration_and_its_latest_load_as_the_model_it_saved(run, mesh1):
  data_dir, workdir = run
  ckpts = os.path.join(workdir, "checkpoints")
  latest = [load_model(p, mesh1) for p in (workdir, ckpts, os.path.join(ckpts, "1"))]
  first = load_model(os.path.join(ckpts, "0"), mesh1)
  assert latest[0].model_cfg.lora_rank == 0  # folded: a plain model
  expected = _leaves(_saved(data_dir, workdir, 1))
  for pre in latest:
    for a, b in zip(_leaves(pre.params), expected):
      np.testing.assert_array_equal(a, b)
  # A dtype asked for applies to a run's model as to any checkpoint (model.dtype).
  half = load_model(workdir, mesh1, dtype="bfloat16")
  assert (half.model_cfg.param_dtype, half.model_cfg.dtype) == ("bfloat16", "bfloat16")
  for a, b in zip(_leaves(half.params), expected):
    np.testing.assert_array_equal(a, b.astype(jax.numpy.bfloat16))
  # M_0 is another model (the iteration trained its adapters).
  assert any(not np.array_equal(a, b) for a, b in zip(_leaves(first.params), expected))
  assert latest[0].tokenizer.encode("a river") == first.tokenizer.encode("a river")


def test_an_iteration_never_saved_is_named(run, mesh1):
  _, workdir = run
  with pytest.raises(CheckpointError, match=r"no iteration 7 \(saved: \[0, 1\]\)"):
    load_model(os.path.join(workdir, "checkpoints", "7"), mesh1)
  assert find_run(os.path.join(workdir, "iter_001")) is None


def test_generate_continues_from_a_run_iteration(run, mesh1):
  """``generate`` from an iteration (its command line is tests/test_generate.py's)."""
  from star_jax.generate import generate
  from star_jax.sampling import Sampler
  _, workdir = run
  text = generate(f"{workdir}/checkpoints/1", "Where would you", 8)
  pre = load_model(workdir, mesh1)
  tok = pre.tokenizer
  sampler = Sampler(pre.model_cfg, pre.graphdef, mesh1, end_ids=tok.end_ids, pad_id=tok.pad_id)
  new = sampler.sample(pre.params, [tok.encode_prompt("Where would you")], 8).sequences(0)
  assert text == tok.decode(new[:-1] if new and new[-1] in tok.end_ids else new)


def test_a_new_run_and_the_plan_start_from_an_earlier_runs_iteration(run, tmp_path, mesh1):
  import star_jax.plan as plan_lib
  data_dir, workdir = run
  checkpoint = os.path.join(workdir, "checkpoints", "1")
  config = load(_config(data_dir, **{"model.checkpoint": checkpoint, "model.lora_rank": 0}))
  exp = build(config, str(tmp_path / "next"))
  earlier = load_model(checkpoint, mesh1)
  assert exp.model_cfg == earlier.model_cfg
  for a, b in zip(_leaves(exp.params), _leaves(earlier.params)):
    np.testing.assert_array_equal(a, b)
  assert exp.tokenizer.encode("a garden") == earlier.tokenizer.encode("a garden")
  assert plan_lib.model_config_of(config) == (checkpoint, earlier.model_cfg)
  assert model_config_of(workdir) == earlier.model_cfg


def test_export_of_a_lora_run_runs_in_transformers(run, tmp_path, mesh1):
  """The export command on a run's latest iteration: adapters folded, logits within 1e-4 of
  ours in transformers, and its SentencePiece tokenizer tokenizes as ours does."""
  _, workdir = run
  out = str(tmp_path / "export")
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  cmd = subprocess.run([sys.executable, "-m", "star_jax.export",
                        f"--checkpoint={workdir}/checkpoints", f"--out={out}"],
                       capture_output=True, env=env, timeout=180)
  assert cmd.returncode == 0, cmd.stderr.decode()[-2000:]
  assert sorted(os.listdir(out)) == ["config.json", "generation_config.json",
                                     "model.safetensors", "tokenizer.model",
                                     "tokenizer_config.json"]
  with open(os.path.join(workdir, "tokenizer.model"), "rb") as a, \
      open(os.path.join(out, "tokenizer.model"), "rb") as b:
    assert a.read() == b.read()
  pre = load_model(workdir, mesh1)
  tok = transformers.AutoTokenizer.from_pretrained(out)
  texts = ["Where would you find a river near a garden?", "x  y\n\nz 123 héllo (C)"]
  for text in texts:
    ids = pre.tokenizer.encode(text)
    assert tok.encode(text, add_special_tokens=False) == ids
    assert tok.decode(ids) == text
  model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  ids = pre.tokenizer.encode(texts[0])
  tokens_BxT = np.asarray([ids], np.int32)
  mask_BxT = np.ones_like(tokens_BxT)
  ours = hf_forward(pre.graphdef, mesh1)(pre.params, tokens_BxT, mask_BxT)
  np.testing.assert_allclose(hf_logits(model, tokens_BxT, mask_BxT), ours, atol=1e-4, rtol=0)
  # A second export to the same place is refused, the first left as it was.
  again = subprocess.run([sys.executable, "-m", "star_jax.export", f"--checkpoint={workdir}",
                          f"--out={out}"], capture_output=True, env=env, timeout=180)
  assert again.returncode == 2  # bad input: one line, no traceback (runtime.cli)
  assert "not an empty directory" in again.stderr.decode()
  assert "Traceback" not in again.stderr.decode()
  assert len(os.listdir(out)) == 5
