"""Model files a stranger hands us, mutated by the hundred (bits flipped, cut short, huge
lengths and counts in the header, wrong JSON types, deep nesting, non-UTF-8): every reader loads
them or refuses in one line naming the file, never a traceback, a hang or a big allocation
(``benchmarks/fuzzing.py``; ``python -m benchmarks.fuzz --minutes=N`` runs the same longer)."""

import pytest

from benchmarks import fuzz, fuzz_targets

pytest.importorskip("gguf")
pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")


@pytest.mark.parametrize("name", ["gguf", "safetensors", "safetensors_index", "hf_config",
                                  "hf_tokenizer"])
def test_a_mutated_model_file_loads_or_is_refused_in_one_line(tmp_path, name):
  tally = fuzz.fuzz(name, str(tmp_path / name), max_examples=100, derandomize=True)
  assert tally.tried == 100 and not tally.violations, tally.violations[0]
  assert tally.refused > 0  # the mutations reached the checks


def test_the_findings_stay_refused(tmp_path):
  """Inputs the fuzzing found, each once a traceback (the fix beside it)."""
  import json
  import struct
  from star_jax.hub import CheckpointError, model_config_of
  directory, file = fuzz_targets.write_safetensors(tmp_path / "hf")
  raw = open(file, "rb").read()
  (n,) = struct.unpack("<Q", raw[:8])
  header = json.loads(raw[8:8 + n])

  def rewrite(edit):
    h = dict(header)
    edit(h)
    text = json.dumps(h).encode()
    open(file, "wb").write(struct.pack("<Q", len(text)) + text + raw[8 + n:])

  cases = [  # (damage, the one line it now gets)
      (lambda: rewrite(lambda h: h.update({"lm_head.weight": {**h["lm_head.weight"],
                                                              "dtype": ["F32"]}})),
       "unknown dtype"),  # place.py: a list as dtype was unhashable
      (lambda: open(file, "wb").write(raw + b"\0" * 8),  # safetensors' "not fully covered"
       "data_offsets cover"),
      (lambda: open(file, "wb").write(raw[:8] + raw[8:8 + n].replace(b"lm_head", b"lm_\xedead")
                                      + raw[8 + n:]), "not UTF-8"),
      (lambda: (open(file, "wb").write(raw), open(f"{directory}/config.json", "w").write(
          json.dumps({**fuzz_targets.hf_config(), "hidden_size": None}))), "no 'hidden_size'"),
      (lambda: open(f"{directory}/config.json", "w").write(
          json.dumps(fuzz_targets.hf_config(num_attention_heads="2"))), "num_attention_heads"),
      (lambda: open(f"{directory}/config.json", "w").write(
          json.dumps(fuzz_targets.hf_config(rope_theta=10**400))), "rope_theta"),  # float() overflow
      (lambda: open(f"{directory}/config.json", "w").write("[" * 100_000), "nested too deeply"),
  ]
  for damage, says in cases:
    damage()
    with pytest.raises(CheckpointError, match=says) as e:
      model_config_of(directory)
    assert "\n" not in str(e.value)


def test_a_gguf_dimension_longer_than_the_file_is_refused(tmp_path):
  """Found by fuzzing: dims [0, 2**63] declare no bytes, and numpy's reshape then failed."""
  import struct
  from star_jax.hub import CheckpointError, model_config_of
  path = fuzz_targets.write_gguf(tmp_path / "m.gguf")
  raw = open(path, "rb").read()
  i = raw.index(b"token_embd.weight") + len(b"token_embd.weight") + 4  # after name and n_dims
  open(path, "wb").write(raw[:i] + struct.pack("<QQ", 0, 2**63) + raw[i + 16:])
  with pytest.raises(CheckpointError, match=r"m\.gguf: tensor 'token_embd\.weight' declares "
                                            r"dimensions \[0, 9223372036854775808\], longer"):
    model_config_of(path)


def test_a_tokenizer_json_that_panics_the_tokenizers_library_is_one_line(tmp_path):
  """Found by fuzzing: a subword prefix longer than a merge's token panics the library's Rust
  (a BaseException, not an Exception)."""
  import json
  from star_jax.hub import CheckpointError
  from star_jax.tokenizer.hf_tokenizer import from_pretrained_dir
  fuzz_targets.write_tokenizer(tmp_path)
  data = json.loads((tmp_path / "tokenizer.json").read_text())
  data["model"]["continuing_subword_prefix"] = "\u2028"
  (tmp_path / "tokenizer.json").write_text(json.dumps(data))
  with pytest.raises(CheckpointError, match=r"tokenizer\.json: not a tokenizer\.json the "
                                            r"tokenizers library reads \(range end index"):
    from_pretrained_dir(str(tmp_path))
