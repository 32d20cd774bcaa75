"""TFDS builders (ArrayRecord, no TensorFlow) over official-schema jsonl fixtures."""

import glob
import json
import os
import sys
import tempfile

import pytest

from star_jax import data
from star_jax.data import DataConfig, sources


def cqa_line(i, key="A", **overrides):
  obj = {"answerKey": key, "id": f"cqa{i:03d}",
         "question": {"question_concept": "thing", "stem": f"Question {i} é?",
                      "choices": [{"label": l, "text": f"choice {l.lower()}{i}"} for l in "ABCDE"]}}
  obj.update(overrides)
  return json.dumps(obj)


def gsm_line(i):
  return json.dumps({"question": f"Problem {i}: what is {i} * 3?",
                     "answer": f"{i} * 3 = <<{i}*3={3 * i}>>{3 * i}\n#### {3 * i:,}"})


def write_lines(path, lines):
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


@pytest.fixture
def cqa_dir(tmp_path):
  write_lines(tmp_path / "train_rand_split.jsonl", [cqa_line(i, "ABCDE"[i % 5]) for i in range(12)])
  write_lines(tmp_path / "dev_rand_split.jsonl", [cqa_line(100 + i, "B") for i in range(5)])
  return tmp_path


@pytest.fixture
def gsm_dir(tmp_path):
  write_lines(tmp_path / "train.jsonl", [gsm_line(i) for i in range(1, 10)])
  write_lines(tmp_path / "test.jsonl", [gsm_line(i) for i in range(500, 504)])
  return tmp_path


def cfg(d, **kw):
  return DataConfig(dir=str(d), download=False, **kw)


def test_cqa_through_tfds_array_record(cqa_dir):
  train = data.load_records("commonsense_qa", "train", cfg(cqa_dir))
  assert [r["id"] for r in train] == [f"cqa{i:03d}" for i in range(12)]  # file order restored
  r = train[3]
  assert r["question"] == "Question 3 é?" and r["answer_key"] == "D" and r["concept"] == "thing"
  assert r["choice_labels"] == list("ABCDE")
  assert r["choice_texts"] == [f"choice {l}3" for l in "abcde"]
  assert r["index"] == 4  # 1-based line number
  dev = data.load_records("commonsense_qa", "eval", cfg(cqa_dir))
  assert [r["id"] for r in dev] == [f"cqa{100 + i:03d}" for i in range(5)]
  # Really prepared as ArrayRecord by TFDS, and TensorFlow was never needed.
  prepared = cqa_dir / "tfds" / "*" / "star_commonsense_qa" / "1.0.0"
  assert glob.glob(str(prepared / "*.array_record*"))
  assert "tensorflow" not in sys.modules
  # Same records as reading the jsonl directly.
  assert train == data.load_records("commonsense_qa", "train", cfg(cqa_dir, use_tfds=False))


def test_preparing_leaves_nothing_in_the_temp_dir(cqa_dir, tmp_path, monkeypatch):
  # TFDS's own bucket lookup made an empty /tmp/tmp*tfds on every preparation, never removed.
  tmp = tmp_path / "tmp"
  tmp.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(tmp))
  data.load_records("commonsense_qa", "train", cfg(cqa_dir))
  assert glob.glob(str(cqa_dir / "tfds" / "*" / "star_commonsense_qa" / "1.0.0" / "*"))
  assert os.listdir(tmp) == []


def test_preparing_prints_nothing_on_stdout(gsm_dir, capfd):
  # the commands' stdout is their report (the pre-flight's last line is JSON)
  data.load_records("gsm8k", "train", cfg(gsm_dir))
  assert capfd.readouterr().out == ""


def test_gsm8k_through_tfds(gsm_dir, tmp_path):
  tfds_dir = tmp_path / "elsewhere"
  c = cfg(gsm_dir, tfds_dir=str(tfds_dir))
  test = data.load_records("gsm8k", "eval", c)
  assert [r["answer"] for r in test] == ["1,500", "1,503", "1,506", "1,509"]
  assert test[0]["id"] == "gsm8k-test-00001"
  assert test[0]["solution"].startswith("500 * 3 = <<500*3=1500>>1500")
  assert glob.glob(str(tfds_dir / "*" / "star_gsm8k" / "1.0.0" / "*test*.array_record*"))
  assert len(data.load_records("gsm8k", "train", c)) == 9
  assert test == data.load_records("gsm8k", "eval", cfg(gsm_dir, use_tfds=False))


def test_edited_source_is_not_served_stale(gsm_dir):
  assert len(data.load_records("gsm8k", "train", cfg(gsm_dir))) == 9
  write_lines(gsm_dir / "train.jsonl", [gsm_line(i) for i in range(1, 4)])
  assert len(data.load_records("gsm8k", "train", cfg(gsm_dir))) == 3


def test_blank_lines_are_skipped_but_line_numbers_kept(tmp_path):
  write_lines(tmp_path / "train.jsonl", [gsm_line(1), "", gsm_line(2), "   "])
  write_lines(tmp_path / "test.jsonl", [gsm_line(3)])
  recs = data.load_records("gsm8k", "train", cfg(tmp_path))
  assert [r["index"] for r in recs] == [1, 3]


@pytest.mark.parametrize("use_tfds", [True, False])
@pytest.mark.parametrize("bad_line, why", [
    ('{"answerKey": "A", "id": ', "malformed JSON"),
    ('["not", "an", "object"]', "expected a JSON object"),
    (json.dumps({"id": "x", "question": {"stem": "s", "choices": [
        {"label": "A", "text": "a"}, {"label": "B", "text": "b"}]}}), "'answerKey'"),
    (cqa_line(7, key="F"), "answer key 'F' is not among the choice labels"),
    (cqa_line(7, question={"stem": "s"}), "'question.choices'"),
])
def test_cqa_bad_line_names_file_and_line(cqa_dir, bad_line, why, use_tfds):
  path = cqa_dir / "train_rand_split.jsonl"
  write_lines(path, [cqa_line(0), cqa_line(1), bad_line, cqa_line(3)])
  with pytest.raises(data.DataFormatError) as e:
    data.load_records("commonsense_qa", "train", cfg(cqa_dir, use_tfds=use_tfds))
  assert str(e.value).startswith(f"{path}:3:")
  assert why in str(e.value)


@pytest.mark.parametrize("bad, why", [
    ({"question": "q", "answer": "no marker 42"}, "'####'"),
    ({"question": "q", "answer": "x\n#### forty"}, "not a number"),
    ({"answer": "x\n#### 4"}, "'question'"),
    ({"question": "q", "answer": 4}, "must be str"),
])
def test_gsm8k_bad_line_names_file_and_line(gsm_dir, bad, why):
  path = gsm_dir / "test.jsonl"
  write_lines(path, [gsm_line(1), json.dumps(bad)])
  with pytest.raises(data.DataFormatError, match=why) as e:
    data.load_records("gsm8k", "eval", cfg(gsm_dir))
  assert str(e.value).startswith(f"{path}:2:")


def test_invalid_utf8_names_line(gsm_dir):
  path = gsm_dir / "train.jsonl"
  path.write_bytes(gsm_line(1).encode() + b"\n" + b'{"question": "\xff"}\n')
  with pytest.raises(data.DataFormatError, match=f"{path}:2: not valid UTF-8"):
    data.load_records("gsm8k", "train", cfg(gsm_dir, use_tfds=False))


def test_missing_files_error_says_which_and_where(tmp_path):
  write_lines(tmp_path / "train_rand_split.jsonl", [cqa_line(0)])
  with pytest.raises(FileNotFoundError) as e:
    data.load_records("commonsense_qa", "train", cfg(tmp_path))
  msg = str(e.value)
  assert f"put dev_rand_split.jsonl into {tmp_path}" in msg
  assert "train_rand_split.jsonl into" not in msg  # only the missing one is named
  assert "https://s3.amazonaws.com/commensenseqa/dev_rand_split.jsonl" in msg
  assert "download disabled" in msg
  with pytest.raises(FileNotFoundError, match="put train.jsonl, test.jsonl into"):
    data.load_records("gsm8k", "train", cfg(tmp_path / "empty"))


def test_no_data_dir_is_a_clear_error():
  with pytest.raises(ValueError, match="data.dir"):
    data.load_records("gsm8k", "train", DataConfig(dir=""))
  with pytest.raises(ValueError, match="known"):
    data.load_records("nope", "train", None)
  with pytest.raises(ValueError, match="split"):
    data.load_records("gsm8k", "test", None)


class _FakeResponse:

  def __init__(self, body):
    self.body = body

  def read(self):
    return self.body

  def __enter__(self):
    return self

  def __exit__(self, *args):
    return False


def test_download_fetches_missing_files(tmp_path, monkeypatch):
  served = {"train.jsonl": gsm_line(1) + "\n" + gsm_line(2) + "\n", "test.jsonl": gsm_line(3)}
  urls = []

  def fake_urlopen(url, timeout):
    urls.append(url)
    assert timeout == 5.0
    return _FakeResponse(served[url.rsplit("/", 1)[1]].encode())

  monkeypatch.setattr(sources.urllib.request, "urlopen", fake_urlopen)
  c = DataConfig(dir=str(tmp_path / "gsm"), download_timeout_s=5.0)
  assert len(data.load_records("gsm8k", "train", c)) == 2
  assert urls == [sources.SOURCES["gsm8k"].url_prefix + n for n in ("train.jsonl", "test.jsonl")]
  assert not glob.glob(str(tmp_path / "gsm" / "*.download"))


def test_failed_download_reports_cause(tmp_path, monkeypatch):

  def offline(url, timeout):
    raise OSError("network unreachable")

  monkeypatch.setattr(sources.urllib.request, "urlopen", offline)
  with pytest.raises(FileNotFoundError) as e:
    data.load_records("gsm8k", "train", DataConfig(dir=str(tmp_path)))
  assert "put train.jsonl, test.jsonl into" in str(e.value)
  assert "network unreachable" in str(e.value)
  assert not os.path.exists(tmp_path / "train.jsonl")


@pytest.mark.parametrize("use_tfds", [True, False])
def test_holdout_splits_one_train_file_into_disjoint_train_and_eval(tmp_path, use_tfds):
  path = tmp_path / "commonsenseqa_train_rand_split.jsonl"  # the name of the shared copy
  write_lines(path, [cqa_line(i, "ABCDE"[i % 5]) for i in range(40)])
  c = DataConfig(train_file=str(path), holdout=10, seed=3, download=False, use_tfds=use_tfds,
                 tfds_dir=str(tmp_path / "tfds"))
  train = data.load_records("commonsense_qa", "train", c)
  held = data.load_records("commonsense_qa", "eval", c)
  assert len(train) == 30 and len(held) == 10
  assert not {r["id"] for r in train} & {r["id"] for r in held}
  assert [r["index"] for r in train] == sorted(r["index"] for r in train)  # file order
  assert held == data.load_records("commonsense_qa", "eval", c)  # the seed decides
  c = c.replace(seed=4)
  assert held != data.load_records("commonsense_qa", "eval", c)
  c = c.replace(holdout=40)
  with pytest.raises(ValueError, match="leaves nothing to train on"):
    data.load_records("commonsense_qa", "train", c)


def test_train_file_errors_are_clear(tmp_path):
  with pytest.raises(FileNotFoundError, match="data.train_file .*nowhere.jsonl"):
    data.load_records("gsm8k", "train", DataConfig(
        train_file=str(tmp_path / "nowhere.jsonl"), holdout=5, download=False))
  with pytest.raises(ValueError, match="data.holdout > 0"):
    data.load_records("gsm8k", "train", DataConfig(
        train_file=str(tmp_path / "x.jsonl"), holdout=0, download=False))
