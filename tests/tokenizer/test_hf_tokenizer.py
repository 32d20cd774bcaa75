"""Pre-trained tokenizers (tokenizer.json directories, GGUF vocabularies) against transformers."""

import pytest

from helpers.reference import SPECIALS, TEXTS, train_tiny_tokenizer
from star_jax.hub.gguf_tokenizer import from_gguf
from star_jax.tokenizer import hf_tokenizer, load_tokenizer

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("tok"))
  train_tiny_tokenizer(directory)
  return directory


def test_tokenizer_json_matches_transformers(tiny_dir):
  ours = hf_tokenizer.from_pretrained_dir(tiny_dir)
  ref = transformers.AutoTokenizer.from_pretrained(tiny_dir)
  for text in TEXTS:
    assert ours.encode(text) == ref.encode(text, add_special_tokens=False), text
  assert (ours.bos_id, ours.eos_id, ours.pad_id) == (1, 2, 0)
  assert set(ours.end_ids) == {2, 0}  # eos <|im_end|>, and <|endoftext|> ends text too
  assert ours.encode("hi", add_bos=True)[0] == 1


def test_prompt_bos_policy_follows_the_checkpoint_as_transformers_does(tiny_dir, tmp_path):
  """No bos unless the tokenizer's own files ask for one (a post-processor adding it, or
  tokenizer_config's add_bos_token), exactly when transformers' tokenizer(text) adds it."""
  import json
  import shutil
  plain = hf_tokenizer.from_pretrained_dir(tiny_dir)
  ref = transformers.AutoTokenizer.from_pretrained(tiny_dir)
  assert not plain.add_bos_token
  for text in TEXTS:
    assert plain.encode_prompt(text) == ref(text)["input_ids"], text
  with_bos = str(tmp_path / "bos")
  shutil.copytree(tiny_dir, with_bos)
  with open(f"{with_bos}/tokenizer.json") as f:
    tj = json.load(f)
  tj["post_processor"] = {"type": "TemplateProcessing",
                          "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                                     {"Sequence": {"id": "A", "type_id": 0}}],
                          "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                                   {"Sequence": {"id": "B", "type_id": 1}}],
                          "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1],
                                                              "tokens": ["<|im_start|>"]}}}
  with open(f"{with_bos}/tokenizer.json", "w") as f:
    json.dump(tj, f)
  ours = hf_tokenizer.from_pretrained_dir(with_bos)
  ref = transformers.AutoTokenizer.from_pretrained(with_bos)
  assert ours.add_bos_token
  for text in TEXTS:
    assert ours.encode_prompt(text) == ref(text)["input_ids"], text
  assert load_tokenizer(f"{with_bos}/tokenizer.json").add_bos_token  # survives save/load


def test_decode_round_trips_and_skips_specials(tiny_dir):
  ours = hf_tokenizer.from_pretrained_dir(tiny_dir)
  for text in TEXTS:
    if not any(s in text for s in SPECIALS):
      assert ours.decode(ours.encode(text)) == text
  ids = ours.encode("<|im_start|>hi<|im_end|>")
  assert ids[0] == 1 and ids[-1] == 2 and len(ids) >= 3  # atomic chat tokens
  assert ours.decode(ids) == "hi"  # bos/eos/pad decode to nothing, per the interface
  assert ours.decode(ours.encode("ab") + [10_000]) == "ab\ufffd"  # beyond the vocabulary


def test_save_and_load_tokenizer(tiny_dir, tmp_path):
  ours = hf_tokenizer.from_pretrained_dir(tiny_dir)
  path = str(tmp_path / "saved.json")
  ours.save(path)
  loaded = load_tokenizer(path)
  assert isinstance(loaded, hf_tokenizer.HFTokenizer)
  assert (loaded.bos_id, loaded.eos_id, loaded.pad_id, loaded.end_ids) == (
      ours.bos_id, ours.eos_id, ours.pad_id, ours.end_ids)
  bare = load_tokenizer(f"{tiny_dir}/tokenizer.json")  # a Hugging Face file, specials beside it
  for text in TEXTS:
    assert loaded.encode(text) == bare.encode(text) == ours.encode(text)


def _write_gguf_vocab(path: str, tiny_dir: str, pre: str, model: str = "gpt2") -> None:
  """A GGUF holding only the tiny tokenizer, the way llama.cpp's converter stores it."""
  import json
  with open(f"{tiny_dir}/tokenizer.json") as f:
    bpe = json.load(f)["model"]
  tokens = sorted(bpe["vocab"], key=bpe["vocab"].get)
  w = gguf.GGUFWriter(path, "llama")
  w.add_tokenizer_model(model)
  w.add_tokenizer_pre(pre)
  w.add_token_list(tokens)
  w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
  w.add_token_merges([" ".join(m) for m in bpe["merges"]])
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


def test_gguf_vocabulary_matches_transformers(tiny_dir, tmp_path):
  _write_gguf_vocab(str(tmp_path / "gpt2.gguf"), tiny_dir, "gpt2")
  ours = from_gguf(gguf.GGUFReader(str(tmp_path / "gpt2.gguf")))
  ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="gpt2.gguf")
  for text in TEXTS:
    assert ours.encode(text) == ref.encode(text, add_special_tokens=False), text
  assert ours.pad_id == ours.eos_id == 2  # no pad in the file: eos pads


def test_smollm_pre_tokenizer_isolates_digits(tiny_dir, tmp_path):
  # The tiny vocabulary learned digit merges ("12"); SmolLM2's pre-tokenizer never lets them apply.
  _write_gguf_vocab(str(tmp_path / "smollm.gguf"), tiny_dir, "smollm")
  ours = from_gguf(gguf.GGUFReader(str(tmp_path / "smollm.gguf")))
  digits = [ours.encode(d)[0] for d in "12345"]
  assert ours.encode("12345") == digits
  assert ours.encode(" 12") == ours.encode(" ") + digits[:2]
  plain = hf_tokenizer.from_pretrained_dir(tiny_dir)
  assert len(plain.encode("12345")) < 5  # the merges exist: without isolation they apply


@pytest.mark.parametrize("pre,model,match", [("llama-bpe", "gpt2", "pre-tokenizer 'llama-bpe'"),
                                             ("default", "llama", "tokenizer.ggml.model='llama'")])
def test_unsupported_gguf_vocabularies_are_refused(tiny_dir, tmp_path, pre, model, match):
  _write_gguf_vocab(str(tmp_path / "v.gguf"), tiny_dir, pre, model)
  with pytest.raises(ValueError, match=match):
    from_gguf(gguf.GGUFReader(str(tmp_path / "v.gguf")))
