"""Tokenizers behind one small interface (`Tokenizer`, base.py).

- `SentencePieceTokenizer` (spm.py): trained in memory on the task texts, or a `.model` file.
- `CharTokenizer` (char.py): one id per character plus optional pieces.
- `HFTokenizer` (hf.py): a pre-trained Hugging Face tokenizer (needs `tokenizers`); GGUF
  files' embedded vocabularies are rebuilt by `star_jax.hub.gguf_tokenizer`.
"""

from __future__ import annotations

import json

from etils import epath

from star_jax.tokenizer.base import (BOS_ID, CHAT_END_PIECES, EOS_ID, PAD_ID, UNK_ID,
                                     SubwordTokenizer, Tokenizer)
from star_jax.tokenizer.char import CharTokenizer
from star_jax.tokenizer.spm import SentencePieceTokenizer

__all__ = ["BOS_ID", "CHAT_END_PIECES", "EOS_ID", "PAD_ID", "UNK_ID", "CharTokenizer",
           "SentencePieceTokenizer", "SubwordTokenizer", "Tokenizer", "load_tokenizer"]


def load_tokenizer(path: epath.PathLike) -> Tokenizer:
  """`.model` -> SentencePieceTokenizer; `.json` -> CharTokenizer, or a pre-trained
  `HFTokenizer` for a file it saved or a Hugging Face `tokenizer.json`."""
  path = epath.Path(path)  # local, or gs:// with epath's GCS backend
  if path.suffix == ".model":
    return SentencePieceTokenizer(path)
  if path.suffix == ".json":
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("type") == "hf_tokenizers" or ("type" not in data and "model" in data):
      from star_jax.tokenizer.hf_tokenizer import HFTokenizer  # needs the optional tokenizers package
      return HFTokenizer.load(str(path))
    return CharTokenizer.load(path)
  raise ValueError(f"unknown tokenizer file type {str(path)!r}: expected a .model or .json file")
