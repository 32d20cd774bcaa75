"""The tokenizer embedded in a GGUF file, rebuilt as a Hugging Face ``tokenizers`` BPE.

llama.cpp stores GPT-2-style byte-level BPE vocabularies as
``tokenizer.ggml.tokens/merges/token_type``; we rebuild them with the
pre-tokenizer llama.cpp uses for that vocabulary, control tokens atomic as in
the reference tokenizers. Gemma's SentencePiece vocabulary (``tokenizer.ggml.model`` "llama",
no merges) is rebuilt as transformers' GGUF loader builds it: a byte-fallback BPE whose merges
come from the vocabulary, ranked by the tokens' order in the file.
"""

from __future__ import annotations

from star_jax.hub.gguf import field
from star_jax.runtime.errors import CheckpointError
from star_jax.tokenizer.hf_tokenizer import HFTokenizer, import_tokenizers

# llama.cpp pre-tokenizers (tokenizer.ggml.pre) we rebuild exactly: GPT-2's byte-level regex,
# and SmolLM's, which first isolates every digit (as SmolLM2's own tokenizer.json does).
PRE_TOKENIZERS = ("default", "gpt2", "smollm")
SENTENCEPIECE_BPE_ARCHS = ("gemma", "gemma2", "gemma3")
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


def from_gguf(reader, where: str = "GGUF") -> HFTokenizer:
  """The byte-level BPE tokenizer embedded in a GGUF file (``tokenizer.ggml.model == gpt2``)."""
  tokenizers = import_tokenizers()
  from tokenizers import decoders, models, pre_tokenizers
  model = field(reader, "tokenizer.ggml.model")
  if model == "llama" and field(reader, "general.architecture") in SENTENCEPIECE_BPE_ARCHS:
    return _gemma(reader, tokenizers, where)
  if model != "gpt2":
    raise CheckpointError(f"{where}: tokenizer.ggml.model={model!r} is not supported (only the "
                     f"GPT-2-style byte-level BPE, 'gpt2', and Gemma's SentencePiece 'llama')")
  pre = field(reader, "tokenizer.ggml.pre", "default")
  if pre not in PRE_TOKENIZERS:
    raise CheckpointError(f"{where}: pre-tokenizer {pre!r} is not supported; known: {PRE_TOKENIZERS}")
  tokens = _strings(reader, "tokenizer.ggml.tokens", where)
  merges = [tuple(m.split(" ", 1)) for m in _strings(reader, "tokenizer.ggml.merges", where)]
  if not all(len(m) == 2 for m in merges):
    raise CheckpointError(f"{where}: a tokenizer.ggml.merges entry is not two tokens and a space")
  try:
    tok = tokenizers.Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
  except (KeyboardInterrupt, SystemExit):
    raise
  except BaseException as e:  # noqa: BLE001 - bare Exceptions, and Rust panics (BaseException)
    raise CheckpointError(f"{where}: tokenizer.ggml.merges do not fit the tokens "
                          f"({str(e).splitlines()[0]})") from None
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if pre == "smollm":
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 byte_level])
  else:
    tok.pre_tokenizer = byte_level
  tok.decoder = decoders.ByteLevel()
  return _finish(tok, reader, tokens, where, add_bos_default=False)


def _gemma(reader, tokenizers, where: str) -> HFTokenizer:
  """Gemma's vocabulary as transformers' ``GemmaTokenizer`` from a GGUF file: spaces as "▁",
  runs of whitespace stored with real spaces respelled in "▁", merges of every token's
  splits into two tokens, ranked by the token's position in the file."""
  from tokenizers import decoders, models, normalizers, pre_tokenizers
  tokens = ["\u2581" * len(t) if " " in t and not t.strip() else t
            for t in _strings(reader, "tokenizer.ggml.tokens", where)]
  vocab = {t: i for i, t in enumerate(tokens)}
  unk_id = field(reader, "tokenizer.ggml.unknown_token_id", 3)
  if not isinstance(unk_id, int) or not 0 <= unk_id < len(tokens):
    raise CheckpointError(f"{where}: tokenizer.ggml.unknown_token_id {unk_id!r} is no token id")
  unk = tokens[unk_id]
  tok = tokenizers.Tokenizer(models.BPE(vocab, _merges(vocab), fuse_unk=True, unk_token=unk,
                                        byte_fallback=True))
  tok.normalizer = normalizers.Replace(" ", "\u2581")
  tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous", invert=False)
  tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                   decoders.Fuse()])
  return _finish(tok, reader, tokens, where, add_bos_default=True)


def _finish(tok, reader, tokens: list[str], where: str, add_bos_default: bool) -> HFTokenizer:
  """Control and user-defined tokens made atomic, then the ids the file names: its end of
  sequence (required), end of turn, start and padding, and its chat template."""
  from tokenizers import AddedToken
  types = field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
  if not isinstance(types, list):
    raise CheckpointError(f"{where}: tokenizer.ggml.token_type is not a list")
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                          for t, ty in zip(tokens, types) if ty == _CONTROL])
  tok.add_tokens([AddedToken(t, special=False, normalized=False)
                  for t, ty in zip(tokens, types) if ty == _USER_DEFINED])
  eos = field(reader, "tokenizer.ggml.eos_token_id")
  if eos is None:
    raise CheckpointError(f"{where}: no tokenizer.ggml.eos_token_id; generation could never "
                          f"stop")
  for key in ("eos", "eot", "bos", "padding"):
    i = field(reader, f"tokenizer.ggml.{key}_token_id")
    if i is not None and (not isinstance(i, int) or not 0 <= i < len(tokens)):
      raise CheckpointError(f"{where}: tokenizer.ggml.{key}_token_id {i!r} is no token id")
  eot = field(reader, "tokenizer.ggml.eot_token_id")
  return HFTokenizer(tok, eos, field(reader, "tokenizer.ggml.bos_token_id"),
                     field(reader, "tokenizer.ggml.padding_token_id"),
                     end_ids=[] if eot is None else [eot],
                     add_bos_token=bool(field(reader, "tokenizer.ggml.add_bos_token",
                                              add_bos_default)),
                     chat_template=field(reader, "tokenizer.chat_template"))


def _strings(reader, key: str, where: str) -> list[str]:
  """The list of strings metadata ``key`` holds, or one line naming the file and the key."""
  value = field(reader, key)
  if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
    raise CheckpointError(f"{where}: {key} is not a list of strings")
  return value


def _merges(vocab: dict[str, int]) -> list[tuple[str, str]]:
  """transformers' ``generate_merges(vocab, {token: -index})``: every split of a token into two
  tokens, the splits of one token by their parts' ids, tokens earlier in the file first (then
  shorter left, then shorter right parts)."""
  ranked = []
  for merge, index in vocab.items():
    local = [(merge[:k], merge[k:]) for k in range(1, len(merge))
             if merge[:k] in vocab and merge[k:] in vocab]
    local.sort(key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
    ranked.extend((-index, left, right) for left, right in local)
  ranked.sort(key=lambda m: (m[0], len(m[1]), len(m[2])), reverse=True)
  return [(left, right) for _, left, right in ranked]
