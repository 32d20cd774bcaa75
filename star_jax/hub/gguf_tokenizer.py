"""The tokenizer embedded in a GGUF file, rebuilt as a Hugging Face ``tokenizers`` BPE.

llama.cpp stores GPT-2-style byte-level BPE vocabularies as
``tokenizer.ggml.tokens/merges/token_type``; we rebuild them with the
pre-tokenizer llama.cpp uses for that vocabulary, control tokens atomic as in
the reference tokenizers.
"""

from __future__ import annotations

from star_jax.hub.gguf import field
from star_jax.tokenizer.hf_tokenizer import HFTokenizer, import_tokenizers

# llama.cpp pre-tokenizers (tokenizer.ggml.pre) we rebuild exactly: GPT-2's byte-level regex,
# and SmolLM's, which first isolates every digit (as SmolLM2's own tokenizer.json does).
PRE_TOKENIZERS = ("default", "gpt2", "smollm")
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


def from_gguf(reader, where: str = "GGUF") -> HFTokenizer:
  """The byte-level BPE tokenizer embedded in a GGUF file (``tokenizer.ggml.model == gpt2``)."""
  tokenizers = import_tokenizers()
  from tokenizers import AddedToken, decoders, models, pre_tokenizers
  model = field(reader, "tokenizer.ggml.model")
  if model != "gpt2":
    raise ValueError(f"{where}: tokenizer.ggml.model={model!r} is not supported (only the "
                     f"GPT-2-style byte-level BPE, 'gpt2')")
  pre = field(reader, "tokenizer.ggml.pre", "default")
  if pre not in PRE_TOKENIZERS:
    raise ValueError(f"{where}: pre-tokenizer {pre!r} is not supported; known: {PRE_TOKENIZERS}")
  tokens = field(reader, "tokenizer.ggml.tokens")
  merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges")]
  tok = tokenizers.Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if pre == "smollm":
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 byte_level])
  else:
    tok.pre_tokenizer = byte_level
  tok.decoder = decoders.ByteLevel()
  types = field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                          for t, ty in zip(tokens, types) if ty == _CONTROL])
  tok.add_tokens([AddedToken(t, special=False, normalized=False)
                  for t, ty in zip(tokens, types) if ty == _USER_DEFINED])
  eos = field(reader, "tokenizer.ggml.eos_token_id")
  if eos is None:
    raise ValueError(f"{where}: no tokenizer.ggml.eos_token_id; generation could never stop")
  eot = field(reader, "tokenizer.ggml.eot_token_id")
  return HFTokenizer(tok, eos, field(reader, "tokenizer.ggml.bos_token_id"),
                     field(reader, "tokenizer.ggml.padding_token_id"),
                     end_ids=[] if eot is None else [eot],
                     add_bos_token=bool(field(reader, "tokenizer.ggml.add_bos_token", False)),
                     chat_template=field(reader, "tokenizer.chat_template"))
