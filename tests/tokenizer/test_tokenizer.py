"""SentencePiece and character tokenizers: round trips, special ids, save/load."""

import json

import numpy as np
import pytest

from star_jax import tasks
from star_jax.data import DataConfig
from star_jax.tokenizer import CharTokenizer, SentencePieceTokenizer, Tokenizer, load_tokenizer

TRICKY = [
    "Q: What is 12 + 7?\nA: 12 + 7 = 19. The answer is 19.\n\n",
    "  two leading spaces, two  inside, trailing  ",
    "\n\n\nthree newlines first",
    "tabs\tand\r\ncarriage returns",
    "Unseen: 日本語, emoji 🙂, accents é ü",
    "",
    " ",
    "<scratch>\n9 9 9 + 1 , C: 0\n</scratch>\n1 0 0 0\n\n",
]


@pytest.fixture(scope="module")
def corpus():
  texts = []
  arith = tasks.get_task("arithmetic")
  for name in ("cqa", "gsm8k"):
    task = tasks.get_task(name)
    for ex in task.exemplars():
      texts.append(task.prompt(ex, hint=True) + task.completion(ex.meta["rationale"], ex))
  for ex in arith.exemplars():
    texts.append(arith.prompt(ex) + arith.completion(arith.gold_rationale(ex), ex))
  return texts * 3


@pytest.fixture(scope="module")
def sp(corpus):
  return SentencePieceTokenizer.train(corpus, vocab_size=600,
                                      user_defined_symbols=["<|im_end|>"])


def test_sentencepiece_round_trip(sp):
  assert isinstance(sp, Tokenizer)
  for text in TRICKY:
    assert sp.decode(sp.encode(text)) == text, repr(text)


def test_sentencepiece_pieces(sp):
  nl = sp.encode("\n")
  assert len(nl) == 1 and sp.encode("a\n\nb").count(nl[0]) == 2  # newline is its own token
  assert len(sp.encode("12345")) == 5  # split_digits: one token per digit
  assert (sp.pad_id, sp.bos_id, sp.eos_id) == (0, 1, 2)
  assert sp.end_ids == (sp.eos_id, sp.encode("<|im_end|>")[0])
  assert sp.vocab_size > 300  # 256 byte-fallback pieces + specials + learned merges
  ids = sp.encode("hi there", add_bos=True)
  assert ids[0] == sp.bos_id and ids[1:] == sp.encode("hi there")


def test_sentencepiece_decode_skips_specials_and_survives_bad_ids(sp):
  ids = sp.encode("hello world")
  assert sp.decode([sp.bos_id, *ids, sp.eos_id, sp.pad_id, sp.pad_id]) == "hello world"
  assert sp.decode(ids + [sp.eos_id] + ids) == "hello worldhello world"  # no stop at eos
  assert sp.decode([*ids, sp.vocab_size + 5, -1]) == "hello world\ufffd\ufffd"


def test_sentencepiece_save_load(sp, tmp_path):
  path = str(tmp_path / "sub" / "tok.model")
  sp.save(path)
  loaded = load_tokenizer(path)
  assert isinstance(loaded, SentencePieceTokenizer)
  for text in TRICKY:
    assert loaded.encode(text) == sp.encode(text)
  assert loaded.end_ids == sp.end_ids and loaded.vocab_size == sp.vocab_size


def test_sentencepiece_training_is_deterministic(corpus):
  a = SentencePieceTokenizer.train(corpus, vocab_size=500)
  b = SentencePieceTokenizer.train(corpus, vocab_size=500)
  assert [a.id_to_piece(i) for i in range(a.vocab_size)] == [
      b.id_to_piece(i) for i in range(b.vocab_size)]


def test_char_tokenizer(tmp_path, corpus):
  tok = CharTokenizer.from_texts(corpus)
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
  assert tok.end_ids == (2,)
  # Ids depend only on the character set, not on text order.
  assert CharTokenizer.from_texts(reversed(corpus)).alphabet == tok.alphabet
  text = "<scratch>\n7 0 6 + 5 9 8 , C: 0\n</scratch>\n1 3 0 4\n\n"
  ids = tok.encode(text)
  assert len(ids) == len(text) and tok.decode(ids) == text
  assert tok.encode("ab", add_bos=True)[0] == 1
  assert tok.decode([1, *tok.encode("ab"), 2, 0, 0]) == "ab"
  assert tok.encode("€") == [3] and tok.decode([3, 999]) == "\ufffd\ufffd"
  path = str(tmp_path / "char.json")
  tok.save(path)
  loaded = load_tokenizer(path)
  assert isinstance(loaded, CharTokenizer) and loaded.alphabet == tok.alphabet
  assert loaded.encode(text) == ids


ARITHMETIC_PIECES = [" " + d for d in "0123456789"] + ["<scratch>\n", " , ", " C: ", "C: "]


def test_char_pieces_keep_one_token_per_digit_and_round_trip(tmp_path, corpus):
  tok = CharTokenizer.from_texts(corpus, pieces=ARITHMETIC_PIECES)
  text = "<scratch>\n7 0 6 + 5 9 8 , C: 0\n6 , 4 C: 1\n\n"
  ids = tok.encode(text)
  pieces = [tok.decode([i]) for i in ids]
  assert pieces == ["<scratch>\n", "7", " 0", " 6", " ", "+", " 5", " 9", " 8", " , ", "C: ", "0",
                    "\n", "6", " , ", "4", " C: ", "1", "\n", "\n"]  # one token per digit
  assert tok.decode(ids) == text
  assert tok.encode("<scratch") == CharTokenizer.from_texts(corpus).encode("<scratch")  # partial
  rng = np.random.default_rng(0)
  alphabet = list(tok.alphabet)
  for _ in range(200):  # any text over the alphabet round-trips
    t = "".join(rng.choice(alphabet, size=int(rng.integers(0, 40))))
    assert tok.decode(tok.encode(t)) == t
  path = str(tmp_path / "pieces.json")
  tok.save(path)
  loaded = load_tokenizer(path)
  assert loaded.pieces == tuple(ARITHMETIC_PIECES) and loaded.encode(text) == ids


def test_char_pieces_split_prompt_and_completion_like_the_whole_text(corpus):
  tok = CharTokenizer.from_texts(corpus, pieces=ARITHMETIC_PIECES + ["Target:\n", "Hint:"])
  task = tasks.get_task("arithmetic")
  for ex in task.load("train", DataConfig(max_train=50, seed=3)):
    for hint in (False, True):
      prompt = task.prompt(ex, hint=hint, few_shot=False)
      target = task.completion(task.gold_rationale(ex), ex)
      assert tok.encode(prompt) + tok.encode(target) == tok.encode(prompt + target)


def test_char_tokenizer_rejects_bad_alphabets(tmp_path):
  with pytest.raises(ValueError, match="duplicate"):
    CharTokenizer(["a", "b", "a"])
  with pytest.raises(ValueError, match="single characters"):
    CharTokenizer(["ab"])
  with pytest.raises(ValueError, match="two or more"):
    CharTokenizer(["a", "b"], pieces=["a"])
  with pytest.raises(ValueError, match="outside the alphabet"):
    CharTokenizer(["a", "b"], pieces=["ac"])
  with pytest.raises(ValueError, match="pieces has duplicates"):
    CharTokenizer(["a", "b"], pieces=["ab", "ab"])
  path = tmp_path / "other.json"
  path.write_text(json.dumps({"type": "bpe"}))
  with pytest.raises(ValueError, match="not a CharTokenizer"):
    load_tokenizer(str(path))
  with pytest.raises(ValueError, match=r"\.model or \.json"):
    load_tokenizer(str(tmp_path / "tok.vocab"))


def test_prompt_and_completion_tokenize_independently(sp):
  # The trainer masks the loss by encoding prompt and completion separately; that
  # must give the same ids as encoding the whole training text.
  for name in ("cqa", "gsm8k", "arithmetic"):
    task = tasks.get_task(name)
    for ex in task.exemplars():
      rationale = task.gold_rationale(ex) or ex.meta["rationale"]
      for hint in (False, True):
        prompt, target = task.prompt(ex, hint=hint), task.completion(rationale, ex)
        assert sp.encode(prompt) + sp.encode(target) == sp.encode(prompt + target), name
