"""Model files whose header lies (a truncated file, tensors declared past its end, absurd
shapes or counts) are refused in one line naming the file and the bad field, before anything
that size is allocated. The files are tiny Llama models the tests write themselves."""

import json
import os
import struct

import numpy as np
import pytest

from star_jax.hub import CheckpointError, load_pretrained, model_config_of

D, H, N, F, V, L = 16, 8, 2, 32, 32, 2


def _llama_tensors():
  rng = np.random.default_rng(0)
  t = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,), "lm_head.weight": (V, D)}
  for i in range(L):
    p = f"model.layers.{i}."
    t.update({p + "self_attn.q_proj.weight": (N * H, D), p + "self_attn.k_proj.weight": (N * H, D),
              p + "self_attn.v_proj.weight": (N * H, D), p + "self_attn.o_proj.weight": (D, N * H),
              p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,),
              p + "mlp.gate_proj.weight": (F, D), p + "mlp.up_proj.weight": (F, D),
              p + "mlp.down_proj.weight": (D, F)})
  return {k: rng.normal(size=s).astype(np.float32) for k, s in t.items()}


def write_safetensors(directory, **config):
  from safetensors.numpy import save_file
  os.makedirs(directory, exist_ok=True)
  cfg = {"architectures": ["LlamaForCausalLM"], "vocab_size": V, "hidden_size": D,
         "num_hidden_layers": L, "num_attention_heads": N, "num_key_value_heads": N,
         "intermediate_size": F, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
         "max_position_embeddings": 64, "hidden_act": "silu", "torch_dtype": "float32",
         "tie_word_embeddings": False, **config}
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(cfg, f)
  save_file(_llama_tensors(), os.path.join(directory, "model.safetensors"))
  return str(directory), os.path.join(directory, "model.safetensors")


GGUF_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
              "output_norm.weight", "lm_head.weight": "output.weight"}


def write_gguf(path, block_count=L):
  import gguf
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_uint32("llama.embedding_length", D)
  w.add_uint32("llama.attention.head_count", N)
  w.add_uint32("llama.block_count", block_count)
  w.add_uint32("llama.feed_forward_length", F)
  w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
  w.add_uint32("llama.vocab_size", V)
  w.add_uint32("llama.context_length", 64)
  parts = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj":
           "attn_v", "self_attn.o_proj": "attn_output", "input_layernorm": "attn_norm",
           "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
           "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
  for k, v in _llama_tensors().items():
    name = GGUF_NAMES.get(k)
    if name is None:
      i, rest = k.split(".")[2], ".".join(k.split(".")[3:-1])
      name = f"blk.{i}.{parts[rest]}.weight"
    w.add_tensor(name, v)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return str(path)


def test_the_tiny_files_load(tmp_path, mesh1):
  directory, _ = write_safetensors(tmp_path / "hf")
  assert load_pretrained(directory, mesh1).model_cfg.num_layers == L
  assert load_pretrained(write_gguf(tmp_path / "m.gguf"), mesh1).model_cfg.d_model == D


def _header(file):
  raw = open(file, "rb").read()
  (n,) = struct.unpack("<Q", raw[:8])
  return raw, n, json.loads(raw[8:8 + n])


def _rewrite_header(file, edit):
  raw, n, header = _header(file)
  edit(header)
  h = json.dumps(header).encode()
  with open(file, "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + raw[8 + n:])


def _set_gguf_dim(path, name, dim):
  """The first dimension of tensor ``name``'s header entry set to ``dim``."""
  raw = open(path, "rb").read()
  i = raw.index(name.encode()) + len(name) + 4  # after the name and its n_dims
  with open(path, "wb") as f:
    f.write(raw[:i] + struct.pack("<Q", dim) + raw[i + 8:])


def _truncate(path):
  os.truncate(path, os.path.getsize(path) * 2 // 3)


@pytest.fixture(autouse=True)
def _no_hang():
  """A loader that trusts a header walks 10^9 layers for minutes: fail at 20 s instead."""
  import signal

  def stop(*_):
    raise TimeoutError("the loader trusted the header")

  old = signal.signal(signal.SIGALRM, stop)
  signal.alarm(20)
  yield
  signal.alarm(0)
  signal.signal(signal.SIGALRM, old)


EMBED = "model.embed_tokens.weight"


@pytest.mark.parametrize("damage,message", ids=["truncated", "past_end", "absurd_shape",
                                               "header_length", "layers"], argvalues=[
    ("truncated", r"model\.safetensors: tensor '.*' declares \[.*\] \(F32\) in data_offsets .*"
                  r"past the end of the file \(\d+ bytes\)"),
    ("past_end", r"model\.safetensors: tensor 'model\.embed_tokens\.weight': shape \[32, 16\] of "
                 r"F32 is 2048 bytes, but data_offsets \[0, 1000000002048\] hold"),
    ("absurd_shape", r"model\.safetensors: tensor 'model\.embed_tokens\.weight' declares "
                     r"\[1099511627776, 1099511627776\] \(F32\).* past the end of the file"),
    ("header_length", r"model\.safetensors: the header length field declares a header, "
                      r"1000000000000 bytes from byte 8, past the end"),
    ("layers", r"config\.json: num_hidden_layers is 1000000000, but the file holds tensors for "
               r"2 layers"),
])
def test_a_safetensors_file_whose_header_lies_is_named_in_one_line(tmp_path, mesh1, damage,
                                                                   message):
  directory, file = write_safetensors(tmp_path / "hf",
                                      **({"num_hidden_layers": 10**9} if damage == "layers" else {}))
  if damage == "truncated":
    _truncate(file)
  elif damage == "past_end":
    _rewrite_header(file, lambda h: h[EMBED].update(data_offsets=[0, 10**12 + 2048]))
  elif damage == "absurd_shape":
    _rewrite_header(file, lambda h: h[EMBED].update(
        shape=[2**40, 2**40], data_offsets=[0, 4 * 2**80]))
  elif damage == "header_length":
    raw = open(file, "rb").read()
    open(file, "wb").write(struct.pack("<Q", 10**12) + raw[8:])
  for load in (lambda: load_pretrained(directory, mesh1), lambda: model_config_of(directory)):
    with pytest.raises(CheckpointError, match=message) as e:
      load()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("damage,message", ids=["truncated", "absurd_shape", "metadata_length",
                                               "layers"], argvalues=[
    ("truncated", r"m\.gguf: tensor 'blk\.\d\.\w+\.weight' declares \d+( x \d+)? \(F32\), \d+ "
                  r"bytes from byte \d+, past the end of the file \(\d+ bytes\)"),
    ("absurd_shape", r"m\.gguf: tensor 'token_embd\.weight' declares 32 x 1099511627776 \(F32\), "
                     r"140737488355328 bytes from byte \d+, past the end of the file"),
    ("metadata_length", r"m\.gguf: metadata key 1 of \d+ declares 1099511627776 bytes"),
    ("layers", r"m\.gguf: llama\.block_count is 1000000000, but the file holds tensors for 2 "
               r"layers"),
])
def test_a_gguf_file_whose_header_lies_is_named_in_one_line(tmp_path, mesh1, damage, message):
  path = write_gguf(tmp_path / "m.gguf", block_count=10**9 if damage == "layers" else L)
  if damage == "truncated":
    _truncate(path)
  elif damage == "absurd_shape":
    _set_gguf_dim(path, "token_embd.weight", 2**40)  # GGUF lists the fastest dim first
  elif damage == "metadata_length":
    raw = open(path, "rb").read()
    i = raw.index(b"general.architecture")  # key 0; key 1's length field comes after its value
    j = raw.index(b"llama", i + 20) + len(b"llama")
    open(path, "wb").write(raw[:j] + struct.pack("<Q", 2**40) + raw[j + 8:])
  for load in (lambda: load_pretrained(path, mesh1), lambda: model_config_of(path)):
    with pytest.raises(CheckpointError, match=message) as e:
      load()
    assert "\n" not in str(e.value)
