"""Models by Hugging Face hub id (hub/hub_ids.py), offline: a hub-layout cache written by the
test (``models--org--name/{refs,snapshots}``), resolved by id and by revision to the same
logits as the directory itself; a missing id and a partial cache are one line each."""

import os
import shutil

import numpy as np
import pytest

from helpers.reference import full_logits, hf_model, save_hf
from star_jax.hub import CheckpointError, load_pretrained, resolve

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache(tmp_path, kind, repo, shards=False):
  """``repo`` as huggingface_hub caches it: the snapshot of COMMIT, refs/main pointing at it."""
  src = save_hf(hf_model(kind), tmp_path / f"src_{kind}",
                **({"max_shard_size": "40KB"} if shards else {}))
  cache = tmp_path / "hf" / "hub"
  root = cache / f"models--{repo.replace('/', '--')}"
  shutil.copytree(src, root / "snapshots" / COMMIT)
  (root / "refs").mkdir(parents=True)
  (root / "refs" / "main").write_text(COMMIT)
  return src, root / "snapshots" / COMMIT


@pytest.fixture
def offline(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
  monkeypatch.delenv("HF_HUB_CACHE", raising=False)
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("kind,repo", [("llama", "org/tiny-llama"), ("gptj", "EleutherAI/tiny-j")])
def test_a_cached_hub_id_loads_by_id_and_revision_as_the_directory_does(tmp_path, mesh1,
                                                                         offline, kind, repo):
  src, snap = _cache(tmp_path, kind, repo, shards=kind == "llama")
  assert resolve(repo) == str(snap) == resolve(f"{repo}@{COMMIT}")
  seq = [3, 17, 5, 9, 60, 2]
  by_dir, by_id = load_pretrained(str(src), mesh1), load_pretrained(f"{repo}@main", mesh1)
  np.testing.assert_array_equal(full_logits(by_id.graphdef, by_id.params, seq),
                                full_logits(by_dir.graphdef, by_dir.params, seq))


def test_a_hub_id_missing_offline_is_one_line_naming_it(tmp_path, offline):
  with pytest.raises(CheckpointError) as e:
    resolve("org/absent")
  msg = str(e.value)
  assert "'org/absent' is not in the Hugging Face cache" in msg and "HF_HUB_OFFLINE=1" in msg
  assert "\n" not in msg


def test_a_partial_cache_names_the_missing_shards(tmp_path, offline):
  _, snap = _cache(tmp_path, "llama", "org/cut", shards=True)
  shard = sorted(f for f in os.listdir(snap) if f.endswith(".safetensors"))[-1]
  os.remove(snap / shard)
  with pytest.raises(CheckpointError, match=f"lacks {shard}"):
    resolve("org/cut")


def test_a_local_directory_of_the_same_name_wins(tmp_path, monkeypatch, offline, caplog):
  src = save_hf(hf_model("llama"), tmp_path / "org" / "local")
  monkeypatch.chdir(tmp_path)
  with caplog.at_level("INFO"):
    assert resolve("org/local") == "org/local"
  assert "the local path of that name, not the Hugging Face hub id" in caplog.text
  assert os.path.samefile(src, tmp_path / "org" / "local")


def test_a_name_that_is_no_checkpoint_says_what_names_are(tmp_path):
  with pytest.raises(CheckpointError, match="a Hugging Face hub id"):
    resolve("not a checkpoint")
