"""The `Tokenizer` interface every part of star_jax sees, and what its implementations share.

`encode`, `decode`, the special ids and `end_ids` (the ids that stop generation)
are all the sampler, the trainer and the tasks ever use. Implementations:
`CharTokenizer` (char.py), `SentencePieceTokenizer` (spm.py) and the pre-trained
`HFTokenizer` (hf.py). The tokenizers star_jax builds itself share the special
ids pad=0, bos=1, eos=2, unk=3, so a model and its batches never depend on
which one was used.
"""

from __future__ import annotations

import abc
from typing import Sequence

from etils import epath

from star_jax.runtime.files import write_bytes_atomic

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
# Pieces that end a chat turn in instruct vocabularies; they stop generation too.
CHAT_END_PIECES = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>")
UNK_TEXT = "\ufffd"  # what an unknown or out-of-vocabulary id decodes to


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

  # Whether text the model reads from the start of its context gets bos first (the
  # checkpoint's own rule for pre-trained tokenizers, as transformers applies it).
  add_bos_token: bool = True

  def encode_prompt(self, text: str) -> list[int]:
    """Ids of raw text the model reads from the start of its context: STaR prompts, training
    texts, the generate command's prompt. One policy for all: bos first when the tokenizer
    says so (`add_bos_token`), as ``transformers``' ``tokenizer(text)`` does. Text rendered
    by a chat template already holds its special tokens: encode it with `encode`."""
    return self.encode(text, add_bos=self.add_bos_token and self.bos_id is not None)

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
      out += [self._decode_run(run), UNK_TEXT]  # out-of-vocabulary id (padded model vocab)
      run = []
    out.append(self._decode_run(run))
    return "".join(out)


def write_bytes(path: epath.PathLike, data: bytes) -> None:
  """Write-then-rename: an interrupted save never leaves a truncated tokenizer (any epath)."""
  write_bytes_atomic(path, data, primary_only=False)
