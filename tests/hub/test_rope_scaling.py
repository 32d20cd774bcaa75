"""Llama 3.1/3.2 RoPE scaling: a checkpoint with ``rope_type: llama3`` loads with transformers'
logits, from its Hugging Face directory and from a GGUF file carrying llama.cpp's
``rope_freqs`` factors; a scaling that is not built is refused by name."""

import json
import math

import numpy as np
import pytest

from helpers.reference import hf_forward, hf_greedy, hf_logits, hf_model, save_hf
from star_jax.engine.positions import inv_frequencies
from star_jax.hub import CheckpointError, load_pretrained
from star_jax.sampling import Sampler

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

# A tiny original context, so that the test's positions reach every branch of the rule: with
# head_dim 16 and theta 500 the wavelengths run from 6 to 1,430 tokens, around 32 / 4 and 32.
LLAMA3 = {"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 32}


def _batch(T=48):
  """Left-padded rows long enough for the slowed frequencies to matter."""
  rng = np.random.default_rng(0)
  tokens_BxT = np.zeros((2, T), np.int32)
  mask_BxT = np.zeros((2, T), np.int32)
  for b, n in enumerate((T, 20)):
    tokens_BxT[b, T - n:] = rng.integers(1, 128, n)
    mask_BxT[b, T - n:] = 1
  return tokens_BxT, mask_BxT


@pytest.fixture(scope="module")
def llama3(tmp_path_factory):
  model = hf_model("llama", rope_parameters=LLAMA3)
  return model, save_hf(model, tmp_path_factory.mktemp("llama3"))


def test_llama3_checkpoint_matches_transformers(llama3, mesh1, mesh8):
  model, path = llama3
  pre = load_pretrained(path, mesh1)
  assert pre.model_cfg.rope_scaling == ("llama3", 8.0, 1.0, 4.0, 32)
  tokens_BxT, mask_BxT = _batch()
  real = mask_BxT.astype(bool)
  ours = hf_forward(pre.graphdef, mesh1)(pre.params, tokens_BxT, mask_BxT)
  ref = hf_logits(model, tokens_BxT, mask_BxT)
  np.testing.assert_allclose(ours[real], ref[real], atol=1e-4, rtol=0)
  # The scaling is what makes them agree: the same weights unscaled are another model.
  plain = hf_logits(hf_model("llama"), tokens_BxT, mask_BxT)
  assert np.abs(plain[real] - ref[real]).max() > 1e-2
  # Sharded over (2, 2, 2) as on one device, to float32 rounding: the sharded reductions add
  # in another order (measured 1.1e-5 on a logit of 1.29, and 1.15e-5 on one of 0.099, over
  # the 1e-5 this allowed once; a sharding error is O(1)).
  sharded = load_pretrained(path, mesh8)
  np.testing.assert_allclose(hf_forward(sharded.graphdef, mesh8)(sharded.params, tokens_BxT,
                                                                mask_BxT)[real],
                             ours[real], atol=5e-5, rtol=1e-5)


def test_llama3_greedy_continuation_matches_transformers(llama3, mesh1):
  """Cached decode past the original context: the sampler's tokens are transformers'."""
  model, path = llama3
  pre = load_pretrained(path, mesh1)
  prompt = np.random.default_rng(1).integers(1, 128, 20).tolist()
  out = Sampler(pre.model_cfg, pre.graphdef, mesh1, batch_size=1).sample(pre.params, [prompt], 40)
  assert out.sequences(0) == hf_greedy(model, prompt, 40)


def llama_cpp_rope_factors(head_dim, theta, factor, low, high, original):
  """What llama.cpp's converter writes as rope_freqs for a llama3 config (one per frequency:
  theta_i is divided by it), written out here independently of star_jax."""
  out = []
  for i in range(0, head_dim, 2):
    wavelen = 2 * math.pi * theta ** (i / head_dim)
    if wavelen < original / high:
      out.append(1.0)
    elif wavelen > original / low:
      out.append(factor)
    else:
      smooth = (original / wavelen - low) / (high - low)
      out.append(1 / ((1 - smooth) / factor + smooth))
  return np.asarray(out, np.float32)


def _permute(w, n_heads):
  """llama.cpp's Q/K row order (the converter's ``permute``)."""
  return (w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def write_llama_gguf(model, path, rope_freqs=None):
  """The tiny transformers Llama as a llama.cpp GGUF (float32 tensors, as the converter names
  and orders them)."""
  c = model.config
  sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_context_length(c.max_position_embeddings)
  w.add_embedding_length(c.hidden_size)
  w.add_block_count(c.num_hidden_layers)
  w.add_feed_forward_length(c.intermediate_size)
  w.add_head_count(c.num_attention_heads)
  w.add_head_count_kv(c.num_key_value_heads)
  w.add_layer_norm_rms_eps(c.rms_norm_eps)
  w.add_rope_freq_base(c.rope_parameters["rope_theta"])
  w.add_vocab_size(c.vocab_size)
  w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
  w.add_tensor("output_norm.weight", sd["model.norm.weight"])
  if rope_freqs is not None:
    w.add_tensor("rope_freqs.weight", rope_freqs)
  for i in range(c.num_hidden_layers):
    p = f"model.layers.{i}."
    w.add_tensor(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"],
                                                    c.num_attention_heads))
    w.add_tensor(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"],
                                                    c.num_key_value_heads))
    for ours, theirs in (("attn_v", "self_attn.v_proj"), ("attn_output", "self_attn.o_proj"),
                         ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"),
                         ("ffn_down", "mlp.down_proj"), ("attn_norm", "input_layernorm"),
                         ("ffn_norm", "post_attention_layernorm")):
      w.add_tensor(f"blk.{i}.{ours}.weight", sd[p + theirs + ".weight"])
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return str(path)


def test_llama_cpp_rope_freqs_are_llama3s_rule(llama3, tmp_path, mesh1):
  model, _ = llama3
  factors = llama_cpp_rope_factors(16, 500.0, 8.0, 1.0, 4.0, 32)
  assert {1.0, 8.0} < set(factors.tolist())  # unchanged, slowed and ramped frequencies
  np.testing.assert_allclose(inv_frequencies(16, 500.0, ("freq_factors", *factors)),
                             inv_frequencies(16, 500.0, ("llama3", 8.0, 1.0, 4.0, 32)),
                             rtol=1e-6)
  pre = load_pretrained(write_llama_gguf(model, tmp_path / "l3.gguf", factors), mesh1)
  assert pre.model_cfg.rope_scaling[0] == "freq_factors"
  tokens_BxT, mask_BxT = _batch()
  real = mask_BxT.astype(bool)
  np.testing.assert_allclose(hf_forward(pre.graphdef, mesh1)(pre.params, tokens_BxT,
                                                            mask_BxT)[real],
                             hf_logits(model, tokens_BxT, mask_BxT)[real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("rope,match", [
    ({"rope_type": "yarn", "rope_theta": 500.0, "factor": 4.0}, "RoPE scaling 'yarn' is not "
     "implemented"),
    ({"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0}, "'llama3' needs "
     "low_freq_factor, high_freq_factor, original_max_position_embeddings"),
])
def test_scalings_not_built_or_incomplete_are_refused_by_name(llama3, tmp_path, mesh1, rope,
                                                              match):
  _, path = llama3
  cfg = json.load(open(f"{path}/config.json"))
  cfg["rope_parameters"] = rope
  bad = tmp_path / "bad"
  bad.mkdir()
  for name in ("model.safetensors",):
    (bad / name).write_bytes(open(f"{path}/{name}", "rb").read())
  (bad / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(CheckpointError, match=match):
    load_pretrained(str(bad), mesh1)
