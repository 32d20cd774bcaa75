"""One id per character, plus optional multi-character pieces: for tiny models trained from
scratch (arithmetic). Deterministic: ids depend only on the alphabet and the pieces."""

from __future__ import annotations

import json
from typing import Iterable, Sequence

from etils import epath

from star_jax.tokenizer.base import BOS_ID, EOS_ID, PAD_ID, UNK_ID, UNK_TEXT, Tokenizer, write_bytes


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
      chars.append(self._vocab[i - 4] if 4 <= i < self.vocab_size else UNK_TEXT)
    return "".join(chars)

  def save(self, path: epath.PathLike) -> None:
    data = {"type": "char", "alphabet": list(self.alphabet), "pieces": list(self.pieces)}
    write_bytes(path, json.dumps(data, ensure_ascii=True).encode())

  @classmethod
  def load(cls, path: epath.PathLike) -> "CharTokenizer":
    data = json.loads(epath.Path(path).read_text(encoding="utf-8"))
    if data.get("type") != "char" or "alphabet" not in data:
      raise ValueError(f"{path} is not a CharTokenizer file (expected type 'char' and 'alphabet')")
    return cls(data["alphabet"], data.get("pieces", ()))
