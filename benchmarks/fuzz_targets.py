"""The readers fuzzed, each with a real seed file to mutate (``fuzzing.py``).

Every target writes a small directory in the real format (a tiny Llama as GGUF, as safetensors
with and without a sharded index, its ``config.json`` and ``tokenizer.json``, a run's
``config.json`` and ``metrics.jsonl``, CommonsenseQA and GSM8K lines) and reads it the way the
project does: ``read(directory)`` calls the project's own entry points on the mutated file.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import shutil
import struct
import sys
from typing import Any, Callable

import numpy as np
from hypothesis import strategies as st

from benchmarks import fuzzing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D, H, N, F, V, L = 16, 8, 2, 32, 32, 2  # a tiny Llama: width, head dim, heads, MLP, vocab, layers


def llama_tensors() -> dict[str, np.ndarray]:
  """A tiny Llama's tensors under transformers' names, float32."""
  rng = np.random.default_rng(0)
  t = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,), "lm_head.weight": (V, D)}
  for i in range(L):
    p = f"model.layers.{i}."
    t.update({p + "self_attn.q_proj.weight": (N * H, D), p + "self_attn.k_proj.weight": (N * H, D),
              p + "self_attn.v_proj.weight": (N * H, D), p + "self_attn.o_proj.weight": (D, N * H),
              p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,),
              p + "mlp.gate_proj.weight": (F, D), p + "mlp.up_proj.weight": (F, D),
              p + "mlp.down_proj.weight": (D, F)})
  return {k: rng.normal(size=s).astype(np.float32) for k, s in t.items()}


def hf_config(**changes) -> dict[str, Any]:
  return {"architectures": ["LlamaForCausalLM"], "vocab_size": V, "hidden_size": D,
          "num_hidden_layers": L, "num_attention_heads": N, "num_key_value_heads": N,
          "intermediate_size": F, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
          "max_position_embeddings": 64, "hidden_act": "silu", "torch_dtype": "float32",
          "tie_word_embeddings": False, "eos_token_id": 1, **changes}


def write_safetensors(directory, shards: int = 1, **config) -> tuple[str, str]:
  """(directory, first .safetensors file) of a tiny Llama in transformers' layout; with
  ``shards`` > 1 the tensors are split over files named by model.safetensors.index.json."""
  from safetensors.numpy import save_file
  directory = str(directory)
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(hf_config(**config), f)
  tensors = llama_tensors()
  if shards == 1:
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    return directory, os.path.join(directory, "model.safetensors")
  names = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
  keys = sorted(tensors)
  weight_map = {k: names[i * shards // len(keys)] for i, k in enumerate(keys)}
  for name in names:
    save_file({k: tensors[k] for k in keys if weight_map[k] == name},
              os.path.join(directory, name))
  with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
               "weight_map": weight_map}, f)
  return directory, os.path.join(directory, names[0])


TOKENS = ["<unk>", "</s>", "<s>"] + [chr(c) for c in range(ord("a"), ord("a") + V - 6)] + [
    "ab", "abc", "cd"]


def write_tokenizer(directory) -> None:
  """A byte-level BPE tokenizer.json of ``V`` tokens and its tokenizer_config.json."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  tok = Tokenizer(models.BPE({t: i for i, t in enumerate(TOKENS)},
                             [("a", "b"), ("ab", "c"), ("c", "d")], unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.save(os.path.join(str(directory), "tokenizer.json"))
  with open(os.path.join(str(directory), "tokenizer_config.json"), "w") as f:
    json.dump({"eos_token": "</s>", "bos_token": "<s>", "add_bos_token": True}, f)


GGUF_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
              "output_norm.weight", "lm_head.weight": "output.weight"}
GGUF_PARTS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj":
              "attn_v", "self_attn.o_proj": "attn_output", "input_layernorm": "attn_norm",
              "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
              "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def write_gguf(path, block_count: int = L, tokenizer: bool = False) -> str:
  """A tiny Llama as llama.cpp's converter writes it; with ``tokenizer``, a GPT-2-style BPE
  vocabulary in its metadata."""
  import gguf
  w = gguf.GGUFWriter(str(path), "llama")
  for key, value in (("embedding_length", D), ("attention.head_count", N),
                     ("block_count", block_count), ("feed_forward_length", F),
                     ("vocab_size", V), ("context_length", 64)):
    w.add_uint32(f"llama.{key}", value)
  w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
  if tokenizer:
    w.add_tokenizer_model("gpt2")
    w.add_token_list(TOKENS)
    w.add_token_merges(["a b", "ab c", "c d"])
    w.add_token_types([2] + [3, 3] + [1] * (V - 3))
    w.add_eos_token_id(1)
    w.add_bos_token_id(2)
  for k, v in llama_tensors().items():
    name = GGUF_NAMES.get(k)
    if name is None:
      i, rest = k.split(".")[2], ".".join(k.split(".")[3:-1])
      name = f"blk.{i}.{GGUF_PARTS[rest]}.weight"
    w.add_tensor(name, v)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return str(path)


# --- the readers, as the project calls them ---------------------------------------------

def _read_tensors(table, source, where: str) -> None:
  """Every tensor the load would read, checked and converted as ``place`` does (no devices)."""
  from star_jax.hub.place import check_table
  check_table(table, source, where)
  for e in table.values():
    e.convert(np.asarray(source.read(e.key)))


def read_gguf(directory: str) -> None:
  from star_jax.hub import gguf, tokenizer_of
  path = os.path.join(directory, "m.gguf")
  reader = gguf.open_reader(path)
  cfg = gguf.model_config(reader, where=path)
  _read_tensors(gguf.table(cfg), gguf.GGUFSource(reader), path)
  tokenizer = tokenizer_of(path, reader)
  if tokenizer is not None:  # a GGUF file without tokenizer metadata holds weights only
    tokenizer.encode("abcd ab")


def read_hf(directory: str) -> None:
  from star_jax.hub import hf, model_config_of
  cfg = model_config_of(directory)
  source = hf.SafetensorsSource(directory)
  _read_tensors(hf.llama_table(cfg), source, directory)


def read_hf_tokenizer(directory: str) -> None:
  from star_jax.hub import tokenizer_of
  tokenizer_of(directory).encode("abcd ab")


@functools.cache
def smoke_config():
  """configs/arithmetic.py:smoke, validated (once a process)."""
  from star_jax import config as config_lib
  spec = importlib.util.spec_from_file_location("arithmetic_config",
                                                os.path.join(ROOT, "configs", "arithmetic.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return config_lib.load(module.get_config("smoke"))


def write_run(directory) -> None:
  """A run's config.json (the smoke config's, as ``record_config`` writes it) and a
  metrics.jsonl of two finished iterations."""
  from star_jax import config as config_lib
  with open(os.path.join(str(directory), "config.json"), "w") as f:
    json.dump(config_lib.to_dict(smoke_config()), f, indent=2, sort_keys=True)
  with open(os.path.join(str(directory), "metrics.jsonl"), "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in METRICS))


METRICS = [{"iteration": n, "eval_accuracy": 0.1 * n, "eval_n": 16, "kept": 4 * n,
            "train_steps": 8 * n, "accuracy_by_digits": {"1": 0.5, "2": 0.25}, "time_s": 1.5}
           for n in range(2)]


def read_run_config(directory: str) -> None:
  from star_jax.experiment import workdir
  workdir.is_resume(smoke_config(), directory)


def read_metrics(directory: str) -> None:
  from star_jax.experiment import workdir
  workdir.finished_iterations(directory)


CQA = [{"answerKey": "ABCDE"[i], "id": f"q{i}",
        "question": {"question_concept": "river", "stem": f"Where is river {i}?",
                     "choices": [{"label": c, "text": w} for c, w in
                                 zip("ABCDE", ["ocean", "house", "garden", "school", "bank"])]}}
       for i in range(3)]
GSM8K = [{"question": f"Tom has {a} apples and buys 7 more. How many?",
          "answer": f"He has {a} + 7 = <<{a}+7={a + 7}>>{a + 7} apples.\n#### {a + 7}"}
         for a in (3, 1200)]


def write_jsonl(directory, files: dict[str, list[dict]]) -> None:
  for name, rows in files.items():
    with open(os.path.join(str(directory), name), "w") as f:
      f.write("".join(json.dumps(r) + "\n" for r in rows))


def read_task(task: str) -> Callable[[str], None]:
  def read(directory: str) -> None:
    from star_jax import tasks
    from star_jax.data.data_config import DataConfig
    tasks.get_task(task).load("train", DataConfig(dir=directory, use_tfds=False, download=False))
  return read


# --- command-line overrides ----------------------------------------------------------------

def override_values() -> st.SearchStrategy[str]:
  return st.one_of(
      st.sampled_from(["", "0", "-1", "1e400", "-1e400", "nan", "inf", "-inf", "True", "None",
                       "[]", "{}", "()", "(1,", "[1, [2]]", "{'a': 1}", "'x'", "\udcff",
                       "(" * 5000, "[" * 5000 + "]" * 5000, "9" * 5000, str(2**64), "1_0",
                       "0x10", "1.5", "-0.0"]),
      st.integers().map(str), st.floats().map(str), st.text(max_size=12))


def override_keys() -> list[str]:
  from star_jax import config as config_lib
  keys = sorted(config_lib.flatten(config_lib.to_dict(smoke_config())))
  return keys + ["star", "train", "task_options", "no_such_key", "star.iteratons",
                 "model.overrides.d_model", "train.learning_rate.x"]


def override_argv() -> st.SearchStrategy[list[str]]:
  """One to three ``--config.KEY=VALUE`` flags over the smoke config's keys (and a few that
  are not keys)."""
  flag = st.builds(lambda k, v: f"--config.{k}={v}", st.sampled_from(override_keys()),
                   override_values())
  return st.lists(flag, min_size=1, max_size=3)


def read_overrides(argv: list[str]) -> None:
  """The command line as ``python -m star_jax.main`` parses it: absl and ml_collections, then
  ``config.load``; a refusal is what ``runtime.cli`` prints. Raises ``fuzzing.CommandLine``
  with that text (a ``UserError``), or anything unexpected as it came."""
  from absl import flags
  from ml_collections import config_flags

  from star_jax import config as config_lib
  from star_jax.runtime import cli
  full = ["star_jax.main", f"--config={ROOT}/configs/arithmetic.py:smoke", *argv]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=fv, lock_config=True)
  saved, sys.argv = sys.argv, full  # ml_collections reads the overrides from sys.argv
  try:
    fv(full)
    values = fv.config
  except flags.Error as e:  # cli.run's parse: one line
    raise fuzzing.CommandLine(cli.flag_message(e)) from e
  except (KeyError, AttributeError) as e:  # an unknown key: cli.run names it
    raise fuzzing.CommandLine(cli.message(e, full)) from e
  finally:
    sys.argv = saved
  cfg = config_lib.load(values)
  again = config_lib.load(json.loads(json.dumps(config_lib.to_dict(cfg))))
  if again != cfg:  # config.json records it: a resume must read back the same config
    raise AssertionError(f"{argv}: the recorded config.json reads back as another config")


# --- the table -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Target:
  """A reader: its seed directory, the file mutated there, how, and how it is read."""
  name: str
  file: str  # the file mutated, inside the seed directory
  write: Callable[[str], None]  # writes the seed directory
  mutations: Callable[[bytes, str], st.SearchStrategy[bytes]]  # (seed bytes, seed dir)
  read: Callable[[str], Any]
  one_line: Callable[[Exception], bool] | None = None  # a refusal allowed more lines


def _json(seed: bytes, _dir: str) -> st.SearchStrategy[bytes]:
  return fuzzing.json_mutations(json.loads(seed))


def _jsonl(seed: bytes, _dir: str) -> st.SearchStrategy[bytes]:
  return fuzzing.jsonl_mutations([json.loads(x) for x in seed.splitlines() if x.strip()])


def _gguf(seed: bytes, directory: str) -> st.SearchStrategy[bytes]:
  import gguf
  head = gguf.GGUFReader(os.path.join(directory, "m.gguf")).data_offset
  return fuzzing.byte_mutations(seed, head)


def _safetensors(seed: bytes, _dir: str) -> st.SearchStrategy[bytes]:
  (n,) = struct.unpack("<Q", seed[:8])
  header = json.loads(seed[8:8 + n])
  # The JSON header mutated as JSON (its length field kept true), or the file as bytes.
  edits = fuzzing.json_mutations(header).map(
      lambda h: struct.pack("<Q", len(h)) + h + seed[8 + n:])
  return edits | fuzzing.byte_mutations(seed, 8 + n)


def _mismatch(e: Exception) -> bool:
  from star_jax.runtime.errors import WorkdirMismatchError
  return isinstance(e, WorkdirMismatchError)  # lists the keys that differ, one a line


TARGETS = {t.name: t for t in (
    Target("gguf", "m.gguf", lambda d: write_gguf(os.path.join(d, "m.gguf"), tokenizer=True),
           _gguf, read_gguf),
    Target("safetensors", "model.safetensors", write_safetensors, _safetensors, read_hf),
    Target("safetensors_index", "model.safetensors.index.json",
           lambda d: write_safetensors(d, shards=2), _json, read_hf),
    Target("hf_config", "config.json", write_safetensors, _json, read_hf),
    Target("hf_tokenizer", "tokenizer.json", lambda d: (write_safetensors(d), write_tokenizer(d)),
           _json, read_hf_tokenizer),
    Target("run_config", "config.json", write_run, _json, read_run_config, _mismatch),
    Target("metrics_jsonl", "metrics.jsonl", write_run, _jsonl, read_metrics),
    Target("cqa_jsonl", "train_rand_split.jsonl",
           lambda d: write_jsonl(d, {"train_rand_split.jsonl": CQA, "dev_rand_split.jsonl": CQA}),
           _jsonl, read_task("cqa")),
    Target("gsm8k_jsonl", "train.jsonl",
           lambda d: write_jsonl(d, {"train.jsonl": GSM8K, "test.jsonl": GSM8K}),
           _jsonl, read_task("gsm8k")),
)}
OVERRIDES = "cli_overrides"
NAMES = (*TARGETS, OVERRIDES)


class Fuzzer:
  """One target's seed directory, written once; ``try_input`` writes a mutation and checks it."""

  def __init__(self, name: str, directory: str):
    self.name, self.tally = name, fuzzing.Tally()
    self.directory = directory
    if name == OVERRIDES:
      self.strategy = override_argv()
      read_overrides(["--config.seed=1"])  # the imports, before any clock runs
      return
    self.target = t = TARGETS[name]
    os.makedirs(directory, exist_ok=True)
    t.write(directory)
    self.path = os.path.join(directory, t.file)
    with open(self.path, "rb") as f:
      self.seed = f.read()
    t.read(directory)  # the seed reads (and the imports are done before any clock runs)
    self.strategy = t.mutations(self.seed, directory)

  def try_input(self, data: Any) -> None:
    if self.name == OVERRIDES:
      keys = tuple(a.split("=", 1)[0].rsplit(".", 1)[-1] for a in data)
      fuzzing.tally_one(self.tally, lambda: read_overrides(data), keys, data)
      return
    with open(self.path, "wb") as f:
      f.write(data)
    fuzzing.tally_one(self.tally, lambda: self.target.read(self.directory),
                      (self.target.file, self.directory), data[:400], self.target.one_line)

  def close(self) -> None:
    if self.name != OVERRIDES:
      shutil.rmtree(self.directory, ignore_errors=True)
