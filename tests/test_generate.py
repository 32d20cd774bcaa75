"""The generation command on a tiny Hugging Face checkpoint with its own tokenizer."""

import os
import subprocess
import sys

import pytest

from helpers.reference import hf_model, train_tiny_tokenizer
from star_jax.generate import generate
from star_jax.hub import load_pretrained
from star_jax.sampling import Sampler

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("tiny_chat"))
  train_tiny_tokenizer(directory)
  hf_model("llama", vocab_size=400).save_pretrained(directory)
  return directory


def _cli(*args):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")  # one device, like a user's shell
  run = subprocess.run([sys.executable, "-m", "star_jax.generate", *args], capture_output=True,
                       env=env, timeout=120, check=True)
  return run.stdout.decode(), run.stderr.decode()  # bytes: "\r" in the text must survive


def test_prints_only_the_greedy_continuation(checkpoint, mesh1):
  prompt = "The quick brown fox"
  stdout, stderr = _cli(f"--checkpoint={checkpoint}", f"--prompt={prompt}", "--max_new_tokens=12")
  pre = load_pretrained(checkpoint, mesh1)
  tok = pre.tokenizer
  sampler = Sampler(pre.model_cfg, pre.graphdef, mesh1, end_ids=tok.end_ids, pad_id=tok.pad_id)
  new = sampler.sample(pre.params, [tok.encode(prompt)], 12).sequences(0)
  new = new[:-1] if new and new[-1] in tok.end_ids else new
  assert stdout == tok.decode(new) + "\n"  # nothing but the continuation on stdout
  assert "load" in stderr


def test_sampling_options_change_the_continuation(checkpoint):
  run = lambda **kw: generate(checkpoint, "hello", 16, chat=True, **kw)
  greedy = run()
  hot = [run(temperature=2.0, seed=s) for s in (0, 0, 1)]
  assert hot[0] == hot[1]  # seeded
  assert len({greedy, hot[0], hot[2]}) == 3
