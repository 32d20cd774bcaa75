"""SentencePiece models (BPE or unigram) trained in memory on a task's texts, or loaded.

Configured so that `decode(encode(s)) == s` for any text: identity
normalisation, whitespace kept as is, newlines as their own piece and byte
fallback for characters never seen in training.
"""

from __future__ import annotations

import io
from typing import Iterable, Sequence

import sentencepiece as spm
from etils import epath

from star_jax.tokenizer.base import (BOS_ID, CHAT_END_PIECES, EOS_ID, PAD_ID, UNK_ID,
                                     SubwordTokenizer, write_bytes)


class SentencePieceTokenizer(SubwordTokenizer):
  """A SentencePiece model (BPE or unigram) with round-trip-safe settings."""

  def __init__(self, model: epath.PathLike | bytes, extra_end_pieces: Sequence[str] = ()):
    """Loads from a `.model` file path or from serialized model bytes."""
    if not isinstance(model, (bytes, bytearray)):
      model = epath.Path(model).read_bytes()  # a local or gs:// file
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
    for piece in (*CHAT_END_PIECES, *extra_end_pieces):
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

  @property
  def model_proto(self) -> bytes:
    """The serialized SentencePiece model (what a ``.model`` file holds)."""
    return self._proto

  def _encode_text(self, text: str) -> list[int]:
    return list(self._sp.encode(text))

  def _decode_run(self, ids: list[int]) -> str:
    return self._sp.decode(ids)

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(i)

  def save(self, path: epath.PathLike) -> None:
    write_bytes(path, self._proto)
