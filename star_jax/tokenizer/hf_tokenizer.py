"""Pre-trained tokenizers (Hugging Face ``tokenizers``) behind star_jax's `Tokenizer` interface.

`from_pretrained_dir` reads a Hugging Face directory: ``tokenizer.json`` plus the
special tokens named in ``tokenizer_config.json`` / ``generation_config.json`` /
``config.json``. (The vocabulary embedded in a GGUF file is rebuilt as an
`HFTokenizer` by `star_jax.hub.gguf_tokenizer`.)

Control tokens (``<|im_start|>``, ``<|im_end|>``, ...) are atomic: text that
spells one encodes to its single id, as in the reference tokenizers.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

from star_jax.runtime.errors import CheckpointError
from star_jax.runtime.files import read_json
from star_jax.tokenizer.base import CHAT_END_PIECES, SubwordTokenizer, write_bytes

_FORMAT = "hf_tokenizers"  # the "type" of files written by HFTokenizer.save


class HFTokenizer(SubwordTokenizer):
  """A ``tokenizers.Tokenizer`` plus the special ids the model was trained with."""

  def __init__(self, tok, eos_id: int, bos_id: int | None = None, pad_id: int | None = None,
               end_ids: Sequence[int] = (), add_bos_token: bool = False,
               chat_template: str | None = None):
    self._tok = tok
    self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
    self.bos_id, self.eos_id = bos_id, int(eos_id)
    self.pad_id = int(pad_id) if pad_id is not None else self.eos_id  # common for causal LMs
    ends = [self.eos_id, *map(int, end_ids)]
    for piece in CHAT_END_PIECES:
      i = tok.token_to_id(piece)
      if i is not None:
        ends.append(i)
    self.end_ids = tuple(dict.fromkeys(ends))  # ordered, without duplicates
    self.add_bos_token = add_bos_token  # whether the model expects bos before a prompt
    self.chat_template = chat_template

  def _encode_text(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids  # bos is the caller's choice

  def _decode_run(self, ids: list[int]) -> str:
    return self._tok.decode(ids, skip_special_tokens=False)

  def token_to_id(self, piece: str) -> int | None:
    return self._tok.token_to_id(piece)

  def id_to_piece(self, i: int) -> str | None:
    return self._tok.id_to_token(i)

  def to_json(self) -> str:
    """The ``tokenizer.json`` text of the underlying ``tokenizers.Tokenizer``."""
    return self._tok.to_str()

  def save(self, path: str) -> None:
    data = {"type": _FORMAT, "tokenizer": json.loads(self._tok.to_str()), "bos_id": self.bos_id,
            "eos_id": self.eos_id, "pad_id": self.pad_id, "end_ids": list(self.end_ids),
            "add_bos_token": self.add_bos_token, "chat_template": self.chat_template}
    write_bytes(path, json.dumps(data, ensure_ascii=False).encode())

  @classmethod
  def load(cls, path: str) -> "HFTokenizer":
    """A file written by `save`, or a bare ``tokenizer.json`` (specials from its directory)."""
    with open(path) as f:
      data = json.load(f)
    if data.get("type") != _FORMAT:
      return from_pretrained_dir(os.path.dirname(os.path.abspath(path)), os.path.basename(path))
    tokenizers = import_tokenizers()
    tok = tokenizers.Tokenizer.from_str(json.dumps(data["tokenizer"]))
    return cls(tok, data["eos_id"], data["bos_id"], data["pad_id"], data["end_ids"],
               data["add_bos_token"], data["chat_template"])


def import_tokenizers():
  try:
    import tokenizers
  except ImportError as e:
    raise ImportError("pre-trained tokenizers need the tokenizers package: "
                      "pip install tokenizers") from e
  return tokenizers


def _read_json(path: str) -> dict[str, Any]:
  return read_json(path, CheckpointError) if os.path.exists(path) else {}


def from_pretrained_dir(directory: str, filename: str = "tokenizer.json") -> HFTokenizer:
  """The tokenizer of a Hugging Face model directory."""
  tokenizers = import_tokenizers()
  path = os.path.join(directory, filename)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{directory} has no {filename} (only fast tokenizers are supported)")
  try:
    tok = tokenizers.Tokenizer.from_file(path)
    tok.encode("a \u2603\u0100 1")  # a vocabulary that cannot encode (no unk token) fails here
  except (KeyboardInterrupt, SystemExit):
    raise
  except BaseException as e:  # noqa: BLE001 - bare Exceptions, and Rust panics (BaseException)
    raise CheckpointError(f"{path}: not a tokenizer.json the tokenizers library reads "
                          f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
  tc = _read_json(os.path.join(directory, "tokenizer_config.json"))
  tc.update({k: v for k, v in _read_json(
      os.path.join(directory, "special_tokens_map.json")).items() if k not in tc})
  gen = _read_json(os.path.join(directory, "generation_config.json"))
  cfg = _read_json(os.path.join(directory, "config.json"))

  def special(name: str) -> int | None:  # token text (str or AddedToken dict) -> id
    v = tc.get(f"{name}_token")
    v = v.get("content") if isinstance(v, dict) else v
    i = tok.token_to_id(v) if v else None
    return i if i is not None else _first(gen.get(f"{name}_token_id", cfg.get(f"{name}_token_id")))

  eos, bos, pad = special("eos"), special("bos"), special("pad")
  if eos is None:
    raise CheckpointError(f"{directory}: no eos token in tokenizer_config.json or config.json; "
                     f"generation could never stop")
  end_ids = _as_list(gen.get("eos_token_id")) + _as_list(cfg.get("eos_token_id"))
  add_bos = tc.get("add_bos_token")
  if add_bos is None:  # the post-processor decides, as in transformers
    probe = tok.encode("a", add_special_tokens=True).ids
    add_bos = bos is not None and bool(probe) and probe[0] == bos
  template = tc.get("chat_template")
  jinja = os.path.join(directory, "chat_template.jinja")
  if template is None and os.path.exists(jinja):
    with open(jinja) as f:
      template = f.read()
  return HFTokenizer(tok, eos, bos, pad, end_ids, bool(add_bos), template)


def _as_list(x) -> list[int]:
  return [] if x is None else [int(i) for i in (x if isinstance(x, list) else [x])]


def _first(x) -> int | None:
  xs = _as_list(x)
  return xs[0] if xs else None


def chat_prompt(tokenizer: HFTokenizer, user_text: str) -> str:
  """``user_text`` as one user turn plus the assistant header, in the model's chat format."""
  template = tokenizer.chat_template
  if template:
    import jinja2.sandbox  # only chat prompts need it
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=["jinja2.ext.loopcontrols"])

    def raise_exception(message):
      raise jinja2.exceptions.TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    specials = {f"{n}_token": tokenizer.id_to_piece(i) or ""
                for n, i in (("bos", tokenizer.bos_id), ("eos", tokenizer.eos_id)) if i is not None}
    return env.from_string(template).render(
        messages=[{"role": "user", "content": user_text}], add_generation_prompt=True, **specials)
  if tokenizer.token_to_id("<|im_start|>") is not None:
    return f"<|im_start|>user\n{user_text}<|im_end|>\n<|im_start|>assistant\n"  # ChatML
  raise ValueError("this tokenizer has no chat template; run without --chat")
