"""Reference forwards and models the parity tests compare against.

`forward` / `full_logits`: our decoder's plain (uncached) forward. `hf_model`:
a tiny random transformers model (needs torch and transformers). `hf_forward`:
our logits for left-padded rows, positions from the mask as the sampler
computes them. `train_tiny_tokenizer`: a byte-level BPE saved by transformers.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from star_jax.engine import decoder, params as params_lib


@functools.partial(jax.jit, static_argnums=0)
def forward(graphdef, params, tokens_BxT):
  model = params_lib.merge(graphdef, params)
  B, T = tokens_BxT.shape
  positions = jnp.broadcast_to(jnp.arange(T), (B, T))
  if model.cfg.positions is not None:
    positions = model.cfg.positions.of_tokens(tokens_BxT, positions == 0)
  h, _ = model(tokens_BxT, positions, decoder.causal_mask(jnp.ones((B, T), jnp.int32)))
  return model.logits(h)


def full_logits(graphdef, params, seq):
  return np.asarray(forward(graphdef, params, jnp.asarray([seq]))[0])


HF_COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def hf_model(kind: str, **overrides):
  """A tiny random transformers model; weights far from their init so every term matters."""
  import torch
  import transformers
  torch.manual_seed({"llama": 0, "qwen2": 1, "gptj": 2, "qwen3": 3, "gemma3": 4,
                     "gemma2": 5}[kind])
  if kind == "llama":  # SmolLM2-like: tied embeddings, GQA, non-default theta
    cfg = transformers.LlamaConfig(**{**HF_COMMON, "tie_word_embeddings": True,
                                      "rope_theta": 500.0, "rms_norm_eps": 1e-5, **overrides})
    model = transformers.LlamaForCausalLM(cfg)
  elif kind == "qwen2":  # q/k/v biases, untied head
    cfg = transformers.Qwen2Config(**{**HF_COMMON, "tie_word_embeddings": False, **overrides})
    model = transformers.Qwen2ForCausalLM(cfg)
  elif kind == "qwen3":  # q/k RMSNorm per head, a head_dim that is not d_model / heads
    cfg = transformers.Qwen3Config(**{**HF_COMMON, "head_dim": 24, "tie_word_embeddings": False,
                                      **overrides})
    model = transformers.Qwen3ForCausalLM(cfg)
  elif kind == "gemma3":  # sliding layers (window 8) among full ones, each with its own RoPE
    cfg = transformers.Gemma3TextConfig(**{**HF_COMMON, **GEMMA3, **overrides})
    model = transformers.Gemma3ForCausalLM(cfg)
  elif kind == "gemma2":  # soft-capped scores and logits, alternating sliding / full layers
    cfg = transformers.Gemma2Config(**{**HF_COMMON, "num_hidden_layers": 4, "head_dim": 16,
                                       "query_pre_attn_scalar": 24, "sliding_window": 8,
                                       "attn_logit_softcapping": 2.0,
                                       "final_logit_softcapping": 5.0, **overrides})
    model = transformers.Gemma2ForCausalLM(cfg)
  else:  # parallel block, LayerNorm with bias, partial interleaved RoPE, biased head
    cfg = transformers.GPTJConfig(**{**dict(vocab_size=128, n_embd=64, n_layer=2, n_head=4,
                                            rotary_dim=8, n_positions=256), **overrides})
    model = transformers.GPTJForCausalLM(cfg)
  randomise(model, norm_one=0.0 if kind.startswith("gemma") else 1.0)
  return model.eval()


# Gemma 3 small enough to test, every feature switched on: 4 layers (sliding, full, sliding,
# sliding), window 8, a query scale that is not head_dim, linear scaling on the full layers.
GEMMA3 = dict(num_hidden_layers=4, head_dim=16, query_pre_attn_scalar=24, sliding_window=8,
              layer_types=["sliding_attention", "full_attention", "sliding_attention",
                           "sliding_attention"],
              rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                               "full_attention": {"rope_type": "linear", "factor": 4.0,
                                                  "rope_theta": 1000.0}})


def randomise(model, norm_one: float = 1.0):
  """Weights far from their init so every term matters: norm scales norm_one + noise (Gemma's
  store w of 1 + w: norm_one 0), everything else noise."""
  import torch
  with torch.no_grad():
    for name, p in model.named_parameters():
      is_norm_scale = p.ndim == 1 and name.endswith("weight")
      p.copy_(norm_one + 0.2 * torch.randn_like(p) if is_norm_scale else 0.2 * torch.randn_like(p))


def save_hf(model, path, **kwargs) -> str:
  model.save_pretrained(str(path), **kwargs)
  return str(path)


def hf_forward(graphdef, mesh):
  """Jitted logits for left-padded rows; positions from the mask, as the sampler does."""
  @jax.jit
  def logits(params, tokens_BxT, mask_BxT):
    model = params_lib.merge(graphdef, params)
    positions_BxT = jnp.maximum(jnp.cumsum(mask_BxT, -1) - 1, 0)
    T = tokens_BxT.shape[1]
    causal_TxT = jnp.tril(jnp.ones((T, T), bool))
    h_BxTxD, _ = model(tokens_BxT, positions_BxT, causal_TxT[None] & (mask_BxT[:, None, :] > 0))
    return model.logits(h_BxTxD)

  def run(params, tokens_BxT, mask_BxT):
    with jax.set_mesh(mesh):
      return np.asarray(logits(params, tokens_BxT, mask_BxT))
  return run


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TRAIN = ["Hello world! 12345 apples and 678 oranges, 3.14159 and 2+2=4.",
         "The quick brown fox jumps over the lazy dog.\n\n  Indented  text\tand tabs",
         "naïve café — déjà vu, 東京 and emojis 🙂🙂",
         "def f(x):\n    return x ** 2  # square",
         "I'm sure they'll say we've DONE it; isn't it?"] * 20
# Unicode, digits, whitespace runs, newlines, tabs, contractions and chat tokens in the text.
TEXTS = ["Hello world", " leading space", "trailing  ", "12345 + 678 = 13023", "3.14159",
         "naïve café 東京 🙂 Ω≈ç√", "tabs\tand\nnewlines\n\n\nand   runs     of spaces",
         "I'm we'll THEY'RE isn't", "def f(x):\n    return x ** 2\n",
         "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
         "text<|im_end|>more<|endoftext|>", "<|im_start|><|im_start|>", "", " ", "\n"]


def train_tiny_tokenizer(directory: str) -> None:
  """A byte-level BPE (~400 ids) saved by transformers as tokenizer.json + tokenizer_config.json."""
  import tokenizers
  import transformers
  from tokenizers import decoders, models, pre_tokenizers, trainers
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(TRAIN, trainers.BpeTrainer(
      vocab_size=400, special_tokens=SPECIALS,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
      pad_token="<|endoftext|>").save_pretrained(directory)


def hf_logits(model, tokens_BxT, mask_BxT):
  """transformers' logits of left-padded rows, positions from the mask (as ``hf_forward``)."""
  import torch
  positions = np.maximum(np.cumsum(mask_BxT, -1) - 1, 0)
  with torch.no_grad():
    return model(input_ids=torch.tensor(tokens_BxT, dtype=torch.long),
                 attention_mask=torch.tensor(mask_BxT),
                 position_ids=torch.tensor(positions)).logits.float().numpy()


def hf_greedy(model, prompt, new_tokens):
  """transformers' greedy continuation of ``prompt`` (no end token: ``new_tokens`` of them)."""
  import torch
  with torch.no_grad():
    ref = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
  return ref[0, len(prompt):].tolist()


def transformers_gguf(path: str):
  """(tokenizer, model in float32, eval mode) as transformers loads the GGUF file at ``path``.

  transformers parses the file whole three times, for its config, its tensors and its
  tokenizer (measured: ~50 s each for Gemma 3's 262k-token vocabulary on a 2-core CPU);
  here the three share one `gguf.GGUFReader` (read-only memory maps), so it is parsed once.
  """
  import os

  import gguf
  import torch
  import transformers
  original = gguf.GGUFReader
  gguf.GGUFReader = functools.lru_cache(maxsize=1)(original)
  try:
    directory, name = os.path.split(path)
    tok = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name,
                                                              dtype=torch.float32)
  finally:
    gguf.GGUFReader = original
  return tok, model.eval()
