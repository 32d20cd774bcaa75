"""Benchmarks end to end on a tiny random Llama: record keys, figures, ratios, agreement."""

import json

import pytest

from benchmarks import (cold_start, common, decode, records, soak, star_iteration,
                        star_sampling, star_vs_trl, to_markdown, train)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from helpers.reference import hf_model, save_hf, train_tiny_tokenizer  # noqa: E402  (torch)
from helpers.runs import write_cqa  # noqa: E402

DECODE_KEYS = set(records.RECORD_KEYS) | {
    "checkpoint", "batch", "prompt_len", "new_tokens", "star_jax_detail", "transformers_detail",
    "token_agreement", "roofline"}
TRAIN_KEYS = set(records.RECORD_KEYS) | {
    "checkpoint", "batch", "seq_len", "tokens_per_step", "star_jax_detail", "transformers_detail",
    "flops_per_token", "matmul_peak_flops", "first_step_loss"}
MACHINE_KEYS = {"cpu_model", "cores", "jax", "jaxlib", "torch", "transformers", "jax_backend",
                "jax_devices"}


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
  """A tiny random LlamaForCausalLM saved as safetensors + config.json (no tokenizer)."""
  return save_hf(hf_model("llama"), tmp_path_factory.mktemp("bench") / "tiny_llama")


def _printed(capsys):
  return records.read_records(capsys.readouterr().out.splitlines())


def _check_common(rec, keys, metric):
  assert keys <= set(rec), keys - set(rec)
  assert MACHINE_KEYS <= set(rec["machine"]), MACHINE_KEYS - set(rec["machine"])
  assert rec["machine"]["cores"] >= 1
  assert rec["metric"] == metric
  assert rec["star_jax"] > 0 and rec["transformers"] > 0
  assert rec["ratio"] == pytest.approx(rec["star_jax"] / rec["transformers"], rel=1e-12)
  assert rec["command"].startswith("python -m benchmarks.")
  json.dumps(rec)  # plain JSON


def test_decode_end_to_end(tiny_llama, capsys):
  recs = decode.run(checkpoint=tiny_llama, batch_sizes=[1, 2], new_tokens=4, prompt_len=8,
                    iters=1, bandwidth_mib=8, markdown=True, cmd="python -m " + decode.MODULE)
  out = capsys.readouterr().out
  assert records.read_records(out.splitlines()) == recs
  assert "| batch=1 |" in out  # the markdown table follows the JSON lines
  assert [r["case"] for r in recs] == ["batch=1", "batch=2"]
  for rec in recs:
    _check_common(rec, DECODE_KEYS, "new_tokens_per_s")
    assert rec["benchmark"] == "decode"
    assert rec["token_agreement"] == 1.0  # same greedy tokens: the same work was timed
    for side in ("star_jax_detail", "transformers_detail"):
      d = rec[side]
      assert d["first_call_s"] > 0 and d["compile_s"] >= 0 and d["median_s"] > 0
      assert d["tokens_per_s"] == pytest.approx(rec["batch"] * 4 / d["median_s"])
  assert rec["star_jax"] == rec["star_jax_detail"]["tokens_per_s"]
  roof = recs[0]["roofline"]
  assert roof["bandwidth_bytes_per_s"] > 0 and roof["tokens_per_s"] > 0
  # Tied embeddings: every matrix once (2 layers of attention + MLP, the 128 x 64 table).
  assert roof["params_read_per_step"] == 2 * (4 * 16 * 64 * 2 + 2 * 16 * 64 * 2
                                              + 3 * 64 * 128 + 2 * 64) + 64 + 128 * 64
  assert roof["param_bytes_per_step"] == 4 * roof["params_read_per_step"]
  assert roof["star_jax_fraction"] == pytest.approx(recs[0]["star_jax"] / roof["tokens_per_s"])
  assert recs[1]["roofline"] is None


def test_train_end_to_end(tiny_llama, capsys):
  recs = train.run(checkpoint=tiny_llama, batch_sizes=[1, 2], seq_len=32, steps=1, matmul_n=64,
                   matmul_repeats=1, cmd="python -m " + train.MODULE)
  assert _printed(capsys) == recs
  assert [r["case"] for r in recs] == ["batch=1 seq_len=32", "batch=2 seq_len=32"]
  for rec in recs:
    _check_common(rec, TRAIN_KEYS, "train_tokens_per_s")
    assert rec["tokens_per_step"] == rec["batch"] * 32
    peak = rec["matmul_peak_flops"]
    assert peak["best"] == max(peak[k] for k in ("jax", "numpy", "torch")) > 0
    for side in ("star_jax", "transformers"):
      d = rec[f"{side}_detail"]
      assert d["tokens_per_s"] == rec[side]
      assert d["flops_per_s"] == pytest.approx(rec["flops_per_token"] * rec[side])
      assert d["fraction_of_peak"] == pytest.approx(d["flops_per_s"] / peak["best"])
      assert d["mfu"] is None  # CPU: no --peak_flops
    loss = rec["first_step_loss"]
    assert loss["star_jax"] == pytest.approx(loss["transformers"], rel=1e-4)
    assert loss["agree"]


METRICS = [
    {"iteration": 0, "eval_accuracy": 0.1, "eval_n": 40, "eval_seconds": 3.0},
    {"iteration": 1, "eval_accuracy": 0.2, "eval_n": 40, "train_questions": 48, "kept": 5,
     "train_steps": 6, "sample_seconds": 4.0, "rationalize_seconds": 2.0, "train_seconds": 5.0,
     "eval_seconds": 1.0},
    {"iteration": 2, "eval_accuracy": 0.3, "eval_n": 40, "kept": 0, "train_steps": 0,
     "sample_seconds": 4.5, "train_seconds": 0.5, "eval_seconds": 1.5},
]


def test_star_iteration_parses_metrics(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps(m) + "\n" for m in reversed(METRICS)) + "\n")
  rows = star_iteration.phase_breakdown(star_iteration.read_metrics(str(path)),
                                        pretrain_seconds=7.0)
  assert [r["iteration"] for r in rows] == [0, 1, 2]
  assert rows[0]["phases"] == {"pretrain_seconds": 7.0, "eval_seconds": 3.0}
  assert rows[0]["pretrain_source"] == "benchmark" and rows[0]["total_seconds"] == 10.0
  assert rows[1]["phases"] == {"sample_seconds": 4.0, "rationalize_seconds": 2.0,
                               "train_seconds": 5.0, "eval_seconds": 1.0}
  assert rows[1]["missing"] == [] and rows[1]["total_seconds"] == 12.0
  assert rows[2]["missing"] == ["rationalize_seconds"] and rows[2]["total_seconds"] == 6.5
  # Without an outside timing, pretrain is reported missing rather than invented.
  assert star_iteration.phase_breakdown(METRICS[:1])[0]["missing"] == ["pretrain_seconds"]

  machine = common.machine_info()
  recs = star_iteration.records_for_run("configs/arithmetic.py:smoke", METRICS, 7.0, 30.0,
                                        machine, "python -m benchmarks.star_iteration")
  for rec, row in zip(recs, rows):
    assert set(records.RECORD_KEYS) <= set(rec)
    assert rec["benchmark"] == "star_iteration"
    assert rec["transformers"] is None and rec["ratio"] is None and rec["peer"] is None
    assert rec["star_jax"] == row["total_seconds"]
    assert rec["run_unaccounted_seconds"] == pytest.approx(30.0 - 28.5)
  table = records.markdown_table(recs)
  assert "| configs/arithmetic.py:smoke | 1 | – | 4 | 2 | 5 | 1 | 12 |" in table


def test_star_iteration_loads_configs_from_any_directory(tmp_path, monkeypatch):
  """A config path is read relative to the current directory, else to the checkout: the
  benchmark runs from anywhere; a wrong path is a clear error, not a run of something else."""
  monkeypatch.chdir(tmp_path)
  cfg = star_iteration.load_config("configs/arithmetic.py:smoke")
  assert cfg.task == "arithmetic" and cfg.star.iterations == 2
  assert cfg.task_options.max_digits == 3  # the variant, not the default
  assert star_iteration.load_config("configs/arithmetic.py").star.iterations == 6
  with pytest.raises(FileNotFoundError, match="configs/nope.py"):
    star_iteration.load_config("configs/nope.py:smoke")


def test_to_markdown_renders_every_benchmark(tmp_path):
  machine = common.machine_info()
  recs = [
      records.record("decode", "batch=1", "new_tokens_per_s", 10.0, 5.0, "transformers", machine,
                    "python -m benchmarks.decode", token_agreement=1.0,
                    roofline={"tokens_per_s": 40.0, "star_jax_fraction": 0.25}),
      records.record("train", "batch=4 seq_len=256", "train_tokens_per_s", 100.0, 50.0,
                    "transformers", machine, "python -m benchmarks.train",
                    matmul_peak_flops={"best": 2e11, "best_source": "jax"},
                    star_jax_detail={"flops_per_s": 1e11, "fraction_of_peak": 0.5}),
  ]
  src = tmp_path / "in.jsonl"
  src.write_text("".join(json.dumps(r) + "\n" for r in recs) + "\n| a markdown line |\n")
  assert records.read_records(src.read_text().splitlines()) == recs
  text = to_markdown.render(recs)
  assert "## Greedy decoding" in text and "## Training step" in text
  assert "| batch=1 | 10 | 5 | 2 |" in text
  assert "| batch=4 seq_len=256 | 100 | 50 | 2 | 100 | – | 200 (jax) | 50.0% |" in text
  assert records.machine_line(machine) in text


def test_star_iteration_reads_finished_runs(tmp_path, capsys):
  from star_jax import config as config_lib
  from star_jax.experiment import workdir as wd
  spec = "configs/arithmetic.py:smoke"
  config = star_iteration.load_config(spec)
  run_dir = tmp_path / "run"
  with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
    star_iteration.run([spec], finished=[str(run_dir)])
  run_dir.mkdir()
  wd.record_config(config_lib.load(config), str(run_dir))
  (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in METRICS[:2]))
  with pytest.raises(ValueError, match="has not finished"):
    star_iteration.run([spec], finished=[str(run_dir)])
  (run_dir / "metrics.jsonl").write_text(
      "".join(json.dumps(dict(m, pretrain_seconds=7.0) if m["iteration"] == 0 else m) + "\n"
              for m in METRICS))
  recs = star_iteration.run([spec], finished=[str(run_dir)], cmd="python -m x")
  assert _printed(capsys) == recs
  assert [r["iteration"] for r in recs] == [0, 1, 2]
  assert recs[0]["phases"]["pretrain_seconds"] == 7.0
  assert recs[0]["pretrain_source"] == "metrics.jsonl"
  other = star_iteration.load_config(spec)
  other.train.learning_rate = 0.5
  with pytest.raises(ValueError, match="train.learning_rate"):
    star_iteration._finished_metrics(spec, other, str(run_dir))
  other = star_iteration.load_config(spec)
  other.star.iterations = 3  # a run can be extended: this one is not, yet
  with pytest.raises(ValueError, match=r"has not finished .* expected \[0, 1, 2, 3\]"):
    star_iteration._finished_metrics(spec, other, str(run_dir))


def _soak_metrics(rss, files, sampler):
  """metrics.jsonl lines of a run whose iteration n held rss[n] MiB, files[n] open files and
  sampler[n] programs in the sampler's cache."""
  return [{"iteration": n, "iteration_seconds": 1.0, "process_rss_mib": r,
           "process_peak_rss_mib": max(rss[:n + 1]), "process_open_files": f,
           "process_threads": 30, "process_compiled_programs": {"sampler": p, "trainer": 2,
                                                                "xla": 10 + p}}
          for n, (r, f, p) in enumerate(zip(rss, files, sampler))]


def test_soak_judges_memory_programs_and_files(tmp_path, capsys):
  flat = _soak_metrics([800.0] * 3 + [900.0, 905.0, 910.0, 900.0, 950.0, 920.0],
                       [10, 12, 11, 12, 12, 12, 12, 12, 12], [6, 14, 14, 16, 16, 16, 16, 16, 16])
  v = soak.verdict(flat)
  assert v["failures"] == [] and v["rss_mib"] == [910.0, 920.0]
  assert v["rss_change"] == pytest.approx(920 / 910 - 1)
  assert v["rss_slope_mib_per_iteration"] == pytest.approx(8.0)
  assert v["compiled_programs"]["sampler"] == [16, 16] and v["open_files"] == [12, 12, 12]
  leaky = _soak_metrics([800.0 + 40 * n for n in range(9)], [10, 12, 11, 12, 12, 12, 12, 13, 14],
                        [6, 14, 14, 16, 16, 16, 17, 18, 19])
  failures = soak.verdict(leaky)["failures"]
  assert [f.split(":")[0] for f in failures] == ["memory", "programs", "files"], failures
  assert "sampler 16 -> 19, xla 26 -> 29" in failures[1] and "trainer" not in failures[1]
  with pytest.raises(ValueError, match="no iteration 5"):
    soak.verdict(leaky[:5])
  with pytest.raises(ValueError, match="no process_"):
    soak.verdict([{"iteration": 0, "eval_accuracy": 0.5}])
  # a finished run judged from its workdir: a table row an iteration, the verdict, the records
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in leaky))
  recs, v = soak.run(finished=str(run_dir), method="grpo", cmd="python -m benchmarks.soak")
  out = capsys.readouterr().out
  assert records.read_records(out.splitlines()) == recs and v["failures"] == failures
  assert "| 8 | 1120.0 | 1120.0 | 14 | 30 | 19 | 2 | 29 | 1.0 |" in out
  assert "grpo: FAIL memory: 1000 MiB at iteration 5, 1120 MiB at 8 (+12.0%, past 10%)" in out
  assert "grpo: FAIL programs" in out and "grpo: FAIL files" in out
  assert [r["case"] for r in recs] == [f"grpo iteration {n}" for n in range(9)] + [
      "grpo verdict"]
  assert recs[-1]["verdict"] == v and recs[-1]["star_jax"] == v["rss_change"]
  with pytest.raises(ValueError, match="holds a run already"):  # its processes' figures
    soak.run(workdir=str(run_dir))


SAMPLING_KEYS = set(records.RECORD_KEYS) | {
    "checkpoint", "workload", "samples", "temperature", "prefix_reuse", "questions",
    "batch_rows", "prompt_tokens_mean", "prefill_tokens_per_call", "new_tokens_per_call",
    "star_jax_detail", "transformers_detail", "greedy_text_agreement", "answered_share"}


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory):
  """A tiny random Llama with its own byte-level BPE (~400 ids), which spells the six CQA
  exemplars in ~1,450 tokens."""
  ckpt = str(tmp_path_factory.mktemp("bench") / "tiny_chat")
  train_tiny_tokenizer(ckpt)
  hf_model("llama", vocab_size=400, max_position_embeddings=2048).save_pretrained(ckpt)
  return ckpt


def test_cold_start_milestones(tiny_chat, capsys):
  recs = cold_start.run(checkpoint=tiny_chat, seq_len=2048, cmd="python -m " + cold_start.MODULE)
  assert _printed(capsys) == recs
  assert [r["case"] for r in recs] == ["imported", "checkpoint loaded", "first sampled token",
                                       "first train step", "second train step (warm)"]
  seconds = [r["star_jax"] for r in recs]
  assert seconds == sorted(seconds) and seconds[0] > 0
  for rec in recs:
    assert set(records.RECORD_KEYS) <= set(rec) and rec["metric"] == "seconds_since_start"
    assert rec["compile_s"] == pytest.approx(sum(s for _, s in rec["compiles"]), abs=0.02)
  def compiled(rec):
    return " ".join(what for what, _ in rec["compiles"])
  assert "prefill" in compiled(recs[2]) and "decode" in compiled(recs[2])
  assert "train step (8 micro-batches of 1 x 2048 tokens)" in compiled(recs[3])
  assert recs[4]["compiles"] == []  # the warm step reuses the compiled one
  assert "| first train step |" in records.markdown_table(recs)


def test_cold_start_of_a_resumed_process_reads_the_compilation_cache(tiny_chat, tmp_path,
                                                                      monkeypatch, capsys):
  """The same cold start twice with one compilation cache: the second reads its programs."""
  import jax
  from star_jax.runtime import compiling
  monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
  monkeypatch.setattr(compiling, "CACHE_MIN_COMPILE_S", 0.0)
  session_cache = jax.config.jax_compilation_cache_dir or ""
  cache = str(tmp_path / "cache")
  try:
    compiling.forget_programs()
    first = cold_start.run(checkpoint=tiny_chat, seq_len=2048, compilation_cache=cache, cmd="c")
    compiling.forget_programs()  # a new process
    second = cold_start.run(checkpoint=tiny_chat, seq_len=2048, compilation_cache=cache,
                            cmd="c")
  finally:
    compiling.use_cache(session_cache)
  capsys.readouterr()
  assert [r["read_from_cache"] for r in first] == [[]] * 5
  read = [w for r in second for w in r["read_from_cache"]]
  assert read == [w for r in second for w, _ in r["compiles"]]
  assert any("train step" in w for w in read) and any("decode" in w for w in read)
  assert "(read from the cache)" in records.markdown_table(second)


def test_star_sampling_end_to_end(tiny_chat, tmp_path, capsys):
  """The CQA few-shot workload on a tiny Llama with its own tokenizer: both workloads, with and
  without prefix reuse, against transformers on the same prompt ids."""
  ckpt = tiny_chat
  write_cqa(str(tmp_path / "cqa"), n_train=6, n_dev=0)
  recs = star_sampling.run(data=str(tmp_path / "cqa" / "train_rand_split.jsonl"),
                           checkpoint=ckpt, questions=6, batch_size=4, max_new_tokens=6,
                           markdown=True, cmd="python -m " + star_sampling.MODULE)
  out = capsys.readouterr().out
  assert records.read_records(out.splitlines()) == recs
  assert [r["case"] for r in recs] == ["greedy n=1 reuse", "greedy n=1 no reuse",
                                       "sampled n=4 reuse", "sampled n=4 no reuse"]
  for rec in recs:
    _check_common(rec, SAMPLING_KEYS, "questions_per_s")
    assert rec["benchmark"] == "star_sampling" and rec["questions"] == 6
  greedy_reuse, greedy_plain, sampled_reuse, sampled_plain = recs
  # Reuse prefills the shared few-shot block once, not once per row: far fewer tokens.
  assert greedy_reuse["prefill_tokens_per_call"] < greedy_plain["prefill_tokens_per_call"] / 2
  assert sampled_reuse["prefill_tokens_per_call"] < sampled_plain["prefill_tokens_per_call"] / 4
  # Same greedy answers as transformers on the same prompt ids, with reuse or without.
  assert greedy_reuse["greedy_text_agreement"] == greedy_plain["greedy_text_agreement"] == 1.0
  assert sampled_reuse["greedy_text_agreement"] is None
  assert "## STaR sampling workload" in to_markdown.render(recs)
  assert "| greedy n=1 reuse |" in records.markdown_table(recs)


ANSWER = " So the answer is (a).\n\n"


@pytest.fixture(scope="module")
def answering_llama(tmp_path_factory):
  """A tiny Llama trained (in torch) to answer every bare prompt of 16 write_cqa questions,
  hinted or not, with "So the answer is (a).", and the questions, half of them with (a) as the
  gold: a STaR iteration keeps those, rationalizes none, and has something to fine-tune on."""
  from star_jax import tasks
  from star_jax.data.sources import SOURCES, read_jsonl
  from star_jax.tokenizer.hf_tokenizer import from_pretrained_dir
  root = tmp_path_factory.mktemp("star_vs_trl")
  ckpt, data = str(root / "llama"), str(root / "cqa")
  train_tiny_tokenizer(ckpt)
  write_cqa(data, n_train=16, n_dev=0)
  task = tasks.get_task("cqa")
  path = f"{data}/train_rand_split.jsonl"
  examples = task.examples(read_jsonl(path, SOURCES["commonsense_qa"].parse, "train"))
  # Gold: the choice shown as (a) for every other question (shown choices are shuffled by id).
  lines = [json.loads(line) for line in open(path)]
  for i, (line, ex) in enumerate(zip(lines, examples)):
    line["answerKey"] = task.shown_choices(ex)[i % 2][1]
  with open(path, "w") as f:
    f.writelines(json.dumps(line) + "\n" for line in lines)
  tok = from_pretrained_dir(ckpt)  # the prompts as both loops encode them
  texts = [(tok.encode_prompt(task.prompt(ex, hint=hint, few_shot=False)), tok.encode(ANSWER))
           for ex in examples for hint in (False, True)]
  width = max(len(p) + len(c) for p, c in texts)
  ids = torch.zeros((len(texts), width), dtype=torch.long)
  labels = torch.full((len(texts), width), -100)
  mask = torch.zeros((len(texts), width), dtype=torch.long)
  for i, (p, c) in enumerate(texts):
    ids[i, :len(p) + len(c)] = torch.tensor(p + c)
    labels[i, len(p):len(p) + len(c)] = torch.tensor(c)
    mask[i, :len(p) + len(c)] = 1
  model = hf_model("llama", vocab_size=400, max_position_embeddings=2048)
  adam = torch.optim.Adam(model.parameters(), lr=3e-3)
  for _ in range(30):
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    adam.zero_grad()
    loss.backward()
    adam.step()
  assert loss.item() < 0.1
  model.save_pretrained(ckpt)
  return ckpt, path


def test_star_vs_trl_both_loops_do_the_same_work(answering_llama, capsys):
  """One iteration both ways from the same weights: the same questions kept, the same rows
  trained on (one row holds every kept text, a row a step) with the same first loss and the
  same loss after one Adam step, the same evaluation; a line per phase with both times.
  Needs TRL (the bench extra: pip install -e ".[test,bench]")."""
  pytest.importorskip("trl")
  ckpt, data = answering_llama
  recs = star_vs_trl.run(
      data=data, checkpoint=ckpt, questions=10, eval_questions=6, steps=2, rows=1,
      seq_len=512, learning_rate=1e-3, batch_size=4, max_new_tokens=24, markdown=True,
      cmd="python -m " + star_vs_trl.MODULE,
      overrides={"star.require_supported": False, "star.few_shot": False,
                 "star.few_shot_rationalization": False})
  assert _printed(capsys) == recs
  phases = ["sample", "rationalize", "fine_tune", "evaluate", "total"]
  # then the same iteration as a new process with the compilation cache, then compiled
  assert [r["phase"] for r in recs] == phases * 3
  assert [r["workload"] for r in recs] == (["greedy n=1"] * 5 + [
      "greedy n=1, from the compilation cache"] * 5 + ["greedy n=1, compiled"] * 5)
  cached, warm, recs = recs[5:10], recs[10:], recs[:5]
  assert [r["programs_compiled"] for r in recs + cached + warm] == [False] * 10 + [True] * 5
  assert [r["compilation_cache"] for r in recs + cached + warm] == [False] * 5 + [True] * 5 + [
      False] * 5
  # the reruns did the same work (the peer's numbers are the one run's)
  assert warm[0]["same_work"] == cached[0]["same_work"] == recs[0]["same_work"]
  assert [r["transformers"] for r in warm] == [r["transformers"] for r in recs]
  assert warm[-1]["star_jax"] < recs[-1]["star_jax"]  # nothing left to compile
  for rec in recs + cached + warm:  # seconds: the ratio is how many times faster star_jax is
    assert set(records.RECORD_KEYS) <= set(rec) and MACHINE_KEYS <= set(rec["machine"])
    assert rec["metric"] == "seconds" and rec["star_jax"] > 0 and rec["transformers"] > 0
    assert rec["ratio"] == pytest.approx(rec["transformers"] / rec["star_jax"], rel=1e-12)
  same = recs[0]["same_work"]
  assert recs[0]["scale"]["questions"] == 10 and same["eval_n"] == {"star_jax": 6,
                                                                      "transformers": 6}
  for key in ("solved_by_generation", "solved_by_rationalization", "kept", "train_steps",
              "train_tokens", "eval_accuracy"):
    assert same[key]["star_jax"] == same[key]["transformers"], (key, same)
  assert same["kept"]["star_jax"] > 0 and same["solved_by_rationalization"]["star_jax"] == 0
  assert same["train_steps"]["star_jax"] == 2 and same["train_tokens"]["star_jax"] > 0
  for key, rel in (("train_first_loss", 1e-3), ("train_loss", 2e-2)):
    assert same[key]["star_jax"] == pytest.approx(same[key]["transformers"], rel=rel), same
  total = recs[-1]
  assert "## A whole STaR iteration against transformers + TRL" in to_markdown.render(recs)
  assert "| greedy n=1 | total |" in records.markdown_table(recs)
  assert total["star_jax"] >= sum(r["star_jax"] for r in recs[:-1]) * 0.99
  assert total["transformers"] == pytest.approx(sum(r["transformers"] for r in recs[:-1]))
