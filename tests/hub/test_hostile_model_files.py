"""Model files whose header lies (a truncated file, tensors declared past its end, absurd
shapes or counts) are refused in one line naming the file and the bad field, before anything
that size is allocated. The files are tiny Llama models the tests write themselves."""

import json
import os
import struct

import pytest

# The tiny Llama's files, shared with the fuzzing that mutates them (benchmarks/fuzz.py).
from benchmarks.fuzz_targets import D, L, write_gguf, write_safetensors
from star_jax.hub import CheckpointError, load_pretrained, model_config_of


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
