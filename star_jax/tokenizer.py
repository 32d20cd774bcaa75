"""Tokenizers behind one small interface.

Everything outside this module sees only `Tokenizer`: `encode`, `decode`, the
special ids and `end_ids` (the ids that stop generation). Two implementations:

- `SentencePieceTokenizer`: BPE/unigram trained in memory on the task texts (or
  loaded from a `.model` file). Configured so that `decode(encode(s)) == s` for
  any text: identity normalisation, whitespace kept as is, newlines as their
  own piece and byte fallback for characters never seen in training.
- `CharTokenizer`: one id per character (plus optional multi-character pieces,
  matched longest first), for tiny models trained from scratch (arithmetic).
  Deterministic: ids depend only on the alphabet and the pieces.

Both share the special ids pad=0, bos=1, eos=2, unk=3, so a model and its
batches never depend on which one was used.
"""

from __future__ import annotations

import abc
import io
import json
import os
from typing import Iterable, Sequence

import sentencepiece as spm

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
# Pieces that end a chat turn in instruct vocabularies; they stop generation too.
_CHAT_END_PIECES = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>")
_UNK_TEXT = "\ufffd"  # what an unknown or out-of-vocabulary id decodes to


class Tokenizer(abc.ABC):
  """Text <-> ids. Subclasses set the attributes below in `__init__`."""

  vocab_size: int
  bos_id: int | None
  eos_id: int
  pad_id: int
  end_ids: tuple[int, ...]  # ids that end generation: eos and chat-end tokens

  @abc.abstractmethod
  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    """Ids of `text`, with bos first when `add_bos` (never eos: callers add it)."""

  @abc.abstractmethod
  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`. Pad, bos and eos decode to nothing; decoding does not stop at eos.

    Ids outside the vocabulary (a model's padded vocabulary can be larger) decode
    to U+FFFD instead of raising, so a bad sample never stops a STaR iteration.
    """

  @abc.abstractmethod
  def save(self, path: str) -> None:
    """Writes the tokenizer so that `load_tokenizer(path)` restores it."""


class SubwordTokenizer(Tokenizer):
  """Shared encode/decode of library-backed tokenizers: subclasses give one text <-> ids pair."""

  @abc.abstractmethod
  def _encode_text(self, text: str) -> list[int]:
    """Ids of `text`, no special tokens added."""

  @abc.abstractmethod
  def _decode_run(self, ids: list[int]) -> str:
    """Text of in-vocabulary ids."""

  def _skip_ids(self) -> set[int]:
    return {i for i in (self.pad_id, self.bos_id, self.eos_id) if i is not None}

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    ids = list(self._encode_text(text))
    if add_bos:
      if self.bos_id is None:
        raise ValueError("add_bos=True but this tokenizer has no bos token")
      ids.insert(0, self.bos_id)
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    skip, out, run = self._skip_ids(), [], []
    for i in (int(x) for x in ids):
      if i in skip:
        continue
      if 0 <= i < self.vocab_size:
        run.append(i)
        continue
      out += [self._decode_run(run), _UNK_TEXT]  # out-of-vocabulary id (padded model vocab)
      run = []
    out.append(self._decode_run(run))
    return "".join(out)


class SentencePieceTokenizer(SubwordTokenizer):
  """A SentencePiece model (BPE or unigram) with round-trip-safe settings."""

  def __init__(self, model: str | bytes, extra_end_pieces: Sequence[str] = ()):
    """Loads from a `.model` file path or from serialized model bytes."""
    if isinstance(model, str):
      with open(model, "rb") as f:
        model = f.read()
    self._proto = bytes(model)
    self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    self.vocab_size = self._sp.get_piece_size()
    self.pad_id = self._sp.pad_id()
    self.unk_id = self._sp.unk_id()
    self.eos_id = self._sp.eos_id()
    bos = self._sp.bos_id()
    self.bos_id = bos if bos >= 0 else None
    if self.eos_id < 0:
      raise ValueError("SentencePiece model has no eos piece; generation could never stop")
    if self.pad_id < 0:
      raise ValueError("SentencePiece model has no pad piece; train it with pad_id set")
    ends = [self.eos_id]
    for piece in (*_CHAT_END_PIECES, *extra_end_pieces):
      i = self._sp.piece_to_id(piece)
      # piece_to_id returns unk for unknown pieces.
      if i != self._sp.unk_id() and i not in ends:
        ends.append(i)
    self.end_ids = tuple(ends)

  @classmethod
  def train(cls,
            texts: Iterable[str],
            vocab_size: int,
            model_type: str = "bpe",
            split_digits: bool = True,
            user_defined_symbols: Sequence[str] = (),
            hard_vocab_limit: bool = False,
            num_threads: int = 2,
            **trainer_kwargs) -> "SentencePieceTokenizer":
    """Trains in memory on `texts` (each item one training "sentence").

    `vocab_size` includes the 4 specials and the 256 byte-fallback pieces, so it
    must exceed ~300. With `hard_vocab_limit=False` (default) a small corpus gives
    a smaller vocabulary instead of an error; read `.vocab_size` afterwards.
    """
    model = io.BytesIO()
    # "\n" must be a piece: SentencePiece would otherwise treat it as
    # whitespace-like input and the few-shot block structure would not survive.
    symbols = ["\n", *[s for s in user_defined_symbols if s != "\n"]]
    kwargs = dict(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        split_digits=split_digits,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        user_defined_symbols=symbols,
        pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
        hard_vocab_limit=hard_vocab_limit,
        max_sentence_length=1 << 16,  # few-shot prompts are long; the default drops them
        num_threads=num_threads,
        minloglevel=2,
    )
    kwargs.update(trainer_kwargs)
    spm.SentencePieceTrainer.train(**kwargs)
    return cls(model.getvalue())

  def _encode_text(self, text: str) -> list[int]:
    return list(self._sp.encode(text))

  def _decode_run(self, ids: list[int]) -> str:
    return self._sp.decode(ids)

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(i)

  def save(self, path: str) -> None:
    _write_bytes(path, self._proto)


class CharTokenizer(Tokenizer):
  """One id per character, plus optional multi-character pieces.

  Ids 0-3 are pad/bos/eos/unk, then the alphabet in order, then the pieces.
  Encoding takes the longest piece that matches at each position (single
  characters always match), so `decode(encode(s)) == s` for any text over the
  alphabet. Pieces shorten sequences without merging digits: with pieces
  " 0".." 9", "9 6 0" is three tokens, one per digit, instead of five.
  """

  def __init__(self, alphabet: Sequence[str], pieces: Sequence[str] = ()):
    alphabet, pieces = list(alphabet), list(pieces)
    for c in alphabet:
      if not isinstance(c, str) or len(c) != 1:
        raise ValueError(f"alphabet entries must be single characters, got {c!r}")
    if len(set(alphabet)) != len(alphabet):
      raise ValueError("alphabet has duplicate characters")
    for p in pieces:
      if not isinstance(p, str) or len(p) < 2:
        raise ValueError(f"pieces must be strings of two or more characters, got {p!r}")
      missing = sorted(set(p) - set(alphabet))
      if missing:
        raise ValueError(f"piece {p!r} uses characters outside the alphabet: {missing}")
    if len(set(pieces)) != len(pieces):
      raise ValueError("pieces has duplicates")
    self.alphabet, self.pieces = tuple(alphabet), tuple(pieces)
    self._vocab = self.alphabet + self.pieces
    self._index = {c: i + 4 for i, c in enumerate(self._vocab)}
    self._lengths = sorted({len(p) for p in self.pieces}, reverse=True)
    self.vocab_size = 4 + len(self._vocab)
    self.pad_id, self.bos_id, self.eos_id, self.unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID
    self.end_ids = (EOS_ID,)

  @classmethod
  def from_texts(cls, texts: Iterable[str], extra: str = "",
                 pieces: Sequence[str] = ()) -> "CharTokenizer":
    """Alphabet = sorted characters of `texts`, `extra` and `pieces` (ids do not depend on
    text order); pieces keep the order given."""
    chars = set(extra)
    for t in texts:
      chars.update(t)
    for p in pieces:
      chars.update(p)
    return cls(sorted(chars), pieces)

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    ids = [BOS_ID] if add_bos else []
    i, n = 0, len(text)
    while i < n:
      for k in self._lengths:  # longest piece first
        if i + k <= n and text[i:i + k] in self._index:
          ids.append(self._index[text[i:i + k]])
          i += k
          break
      else:
        ids.append(self._index.get(text[i], UNK_ID))
        i += 1
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    chars = []
    for i in (int(x) for x in ids):
      if i in (PAD_ID, BOS_ID, EOS_ID):
        continue
      chars.append(self._vocab[i - 4] if 4 <= i < self.vocab_size else _UNK_TEXT)
    return "".join(chars)

  def save(self, path: str) -> None:
    data = {"type": "char", "alphabet": list(self.alphabet), "pieces": list(self.pieces)}
    _write_bytes(path, json.dumps(data, ensure_ascii=True).encode())

  @classmethod
  def load(cls, path: str) -> "CharTokenizer":
    with open(path) as f:
      data = json.load(f)
    if data.get("type") != "char" or "alphabet" not in data:
      raise ValueError(f"{path} is not a CharTokenizer file (expected type 'char' and 'alphabet')")
    return cls(data["alphabet"], data.get("pieces", ()))


def load_tokenizer(path: str) -> Tokenizer:
  """`.model` -> SentencePieceTokenizer; `.json` -> CharTokenizer, or a pre-trained
  `HFTokenizer` for a file it saved or a Hugging Face `tokenizer.json`."""
  if path.endswith(".model"):
    return SentencePieceTokenizer(path)
  if path.endswith(".json"):
    with open(path) as f:
      data = json.load(f)
    if data.get("type") == "hf_tokenizers" or ("type" not in data and "model" in data):
      from star_jax.hf_tokenizer import HFTokenizer  # needs the optional tokenizers package
      return HFTokenizer.load(path)
    return CharTokenizer.load(path)
  raise ValueError(f"unknown tokenizer file type {path!r}: expected a .model or .json file")


def _write_bytes(path: str, data: bytes) -> None:
  # Write-then-rename: an interrupted save never leaves a truncated tokenizer.
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)
