"""Memory planning without the hardware: the train step and the sampler of a config compiled
for abstract arrays, their per-device figures set against a budget."""

import json
import os
import subprocess
import sys

import pytest

from helpers.runs import load_config
from star_jax import plan
from star_jax.engine.memory import GIB
from star_jax.engine.model_config import get_preset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(**mesh):
  """cqa with the random tiny preset, small shapes, on the conftest's 8 devices."""
  c = load_config("cqa")
  c.model.checkpoint, c.model.preset = "", "tiny"
  c.tokenizer.vocab_size = 256
  c.train.batch_size, c.train.grad_accum, c.train.seq_len = 8, 2, 128
  c.sample.batch_size = 16
  c.mesh = dict({"data": -1, "fsdp": 1, "tensor": 1}, **mesh)
  return c


def _program(report, name):
  return next(p for p in report["programs"] if p["what"].startswith(name))


@pytest.fixture(scope="module")
def fsdp_report():
  return plan.plan(_config(data=1, fsdp=8), device_memory_gib=1.0, prompt_len=40, new_tokens=16)


def test_a_plan_that_fits_reports_every_program_and_its_parts(fsdp_report):
  r = fsdp_report
  assert r["fits"] and r["devices"] == 8 and r["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  assert [p["what"].split(" (")[0] for p in r["programs"]] == [
      "train step", "sampler prefill", "sampler decode loop"]
  cfg = get_preset("tiny")
  train = _program(r, "train step")
  assert "2 micro-batches of 8 x 128 tokens" in train["what"]
  # fsdp=8 splits every matrix's embed dimension 8 ways; only the norms stay whole.
  params = train["parts"]["parameters"] * GIB
  assert cfg.num_params() * 4 / 8 <= params < cfg.num_params() * 4 / 8 + 8 * cfg.d_model * 4
  assert train["parts"]["optimizer state"] == pytest.approx(2 * train["parts"]["parameters"],
                                                            abs=1e-6)  # Adam's mu and nu
  # XLA holds at least the state it is given, and the total is what each part adds up to.
  assert train["arguments"] >= train["parts"]["parameters"] + train["parts"]["optimizer state"]
  assert train["total"] == pytest.approx(
      train["arguments"] + train["outputs"] + train["temporaries"] - train["aliased"], abs=1e-5)
  assert train["fits"] and train["compile_s"] > 0
  decode = _program(r, "sampler decode loop")
  # 16 rows of 48 + 16 slots, 2 layers of keys and values, batch split over the 8 fsdp shards.
  kv = 2 * 2 * 16 * cfg.num_kv_heads * (48 + 16) * cfg.head_dim * 4 / 8
  assert decode["parts"]["KV cache"] * GIB == pytest.approx(kv, abs=8)
  assert decode["arguments"] >= decode["parts"]["KV cache"] + decode["parts"]["parameters"]
  text = plan.format_report(r)
  assert text.endswith("verdict: fits") and "DOES NOT FIT" not in text


def test_a_plan_that_does_not_fit_says_by_how_much_and_what_dominates(fsdp_report):
  # A big sample batch with long prompts on a replicated model: the KV cache outgrows the rest.
  c = _config(data=8)
  c.sample.batch_size = 256
  r = plan.plan(c, device_memory_gib=0.004, prompt_len=224, new_tokens=32)
  assert not r["fits"]
  decode = _program(r, "sampler decode loop")
  assert decode["dominant"] == "KV cache"
  assert decode["parts"]["KV cache"] > decode["parts"]["parameters"]
  assert decode["overshoot"] == pytest.approx(decode["total"] - 0.004, abs=1e-5)
  text = plan.format_report(r)
  assert f"DOES NOT FIT by {decode['overshoot']:.2f} GiB; KV cache dominate" in text
  assert "verdict: does not fit: " in text and "sampler decode loop by" in text
  # The same train step as the fitting plan's, against a budget below its parameters.
  train = _program(fsdp_report, "train step")
  small = plan.plan(_config(data=1, fsdp=8), device_memory_gib=train["total"] / 2,
                    prompt_len=40, new_tokens=16)
  t = _program(small, "train step")
  assert not t["fits"] and t["overshoot"] == pytest.approx(train["total"] / 2, abs=1e-5)
  assert t["dominant"] == max(t["parts"], key=t["parts"].get)


def test_an_unknown_preset_is_a_clear_error():
  c = _config()
  c.model.preset = "gpt-9"
  with pytest.raises(ValueError, match=r"unknown model preset 'gpt-9'; known: .*'llama-3-8b'"):
    plan.plan(c, device_memory_gib=1.0, prompt_len=40, new_tokens=16)


def test_a_mesh_that_does_not_divide_the_devices_is_a_clear_error():
  with pytest.raises(ValueError, match=r"config.mesh .*'data': 3.* does not fit 8 devices"):
    plan.plan(_config(data=3), device_memory_gib=1.0, prompt_len=40, new_tokens=16)


def test_rows_the_mesh_cannot_split_are_planned_as_a_run_lays_them_out():
  c = _config()  # 8 batch shards: 2 rows x 2 micro-batches a step train as 1 x 8 rows
  c.train.batch_size = 2
  assert plan.plan(c, device_memory_gib=1.0, prompt_len=40, new_tokens=16)["train_shape"] == [
      1, 8, 128]


def test_the_real_presets_have_the_published_sizes():
  assert get_preset("llama-3-8b").num_params() == 8_030_261_248  # Meta-Llama-3-8B
  gptj = get_preset("gptj-6b")
  assert (gptj.num_layers, gptj.d_model, gptj.num_heads, gptj.rotary_dim, gptj.vocab_size) == (
      28, 4096, 16, 64, 50400)


def test_the_command_line_makes_its_own_devices_and_exits_1_when_it_does_not_fit():
  env = dict(os.environ, PYTHONPATH=ROOT)  # the conftest's 8 devices must not leak in
  cmd = [sys.executable, "-m", "star_jax.plan", "--config=configs/cqa.py", "--devices=4",
         "--device_memory_gib=0.001", "--config.model.checkpoint=", "--config.train.seq_len=128",
         "--config.train.batch_size=4", "--config.train.grad_accum=2", "--prompt_len=40",
         "--new_tokens=16", "--config.mesh.data=2", "--config.mesh.fsdp=2"]
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 1, out.stderr[-2000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert report["devices"] == 4 and report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
  assert "DOES NOT FIT by" in out.stdout and "verdict: does not fit" in out.stdout
  bad = subprocess.run(cmd[:-2] + ["--config.mesh.data=3"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
  assert bad.returncode == 2 and "does not fit 4 devices" in bad.stderr


def _has_libtpu():
  import importlib.util
  return importlib.util.find_spec("libtpu") is not None


needs_libtpu = pytest.mark.skipif(
    not _has_libtpu(), reason="needs libtpu (pip install -e '.[tpu]'; .ci/run installs it): "
    "the TPU compiler runs on this CPU, no TPU needed")


@needs_libtpu
def test_the_tpu_compiler_plans_scanned_remat_lora_and_tensor_parallel_sampling():
  """A tiny config compiled for v5e:2x2 by libtpu, with the TPU code paths: scanned layers
  with remat, LoRA adapters, the tensor-parallel sampling layout. Every program has the
  compiler's memory and cost; a budget it overflows is named with its dominant part."""
  c = _config(data=1, fsdp=2, tensor=2)
  c.model.overrides = dict(c.model.overrides, scan_layers=True, remat=True)
  c.model.lora_rank = 4
  c.sample.layout = "tensor"
  r = plan.plan(c, device_memory_gib=1e-4, prompt_len=40, new_tokens=16, topology="v5e:2x2")
  assert r["compiler"].startswith("TPU compiler (libtpu") and "4 x TPU v5 lite" in r["compiler"]
  assert r["devices"] == 4 and r["chip"]["hbm_gib"] == 16
  train = _program(r, "train step")
  assert train["cost"]["flops"] > 0 and train["roofline"]["unit"] == "micro-batch"
  roof = train["roofline"]
  assert roof["step_seconds"] == pytest.approx(roof["unit_seconds"] * r["train_shape"][0])
  # The compiler counts the model's work (6 N + causal attention) and more: attention's full
  # square and remat's second forward (measured 1.27); below 1 it would have missed work.
  assert 1.0 <= roof["compiler_over_model_flops"] <= 2.0
  assert "cost_note" not in roof  # compiled directly, with no loop left in it
  # The budget of 1e-4 GiB overflows: each program says by how much and what dominates.
  assert not r["fits"] and all(p["overshoot"] > 0 for p in r["programs"])
  text = plan.format_report(r)
  assert "DOES NOT FIT" in text and "compiled by: TPU compiler" in text
  assert "x the model's FLOPs" in text
  # The sampler's cost comes from a compile with the layers unrolled (a scanned program's
  # counts one layer): a decode step does at least the model's 2 N FLOPs a row.
  decode = _program(r, "sampler decode")
  cfg = get_preset("tiny")
  weights = cfg.num_params(include_embedding=False)  # every layer's (one layer's: half)
  assert decode["roofline"]["unit"] == "decode step"
  # measured 1.12e6 FLOPs a device, against 7.2e5 for 2 N a row (one layer counted: < 6e5)
  assert decode["cost"]["flops"] >= 2 * weights * c.sample.batch_size / r["devices"]
  assert _program(r, "sampler prefill")["roofline"]["unit"] == "prefill"
  # benchmarks.plan_table's row for it (docs/plan.md's TPU table): LoRA, the overflow named.
  from benchmarks import plan_table
  assert r["lora_rank"] == 4
  row = plan_table.table(plan_table.merged([r]))
  assert "| tiny | LoRA r4 | v5e:2x2 (4 x 0.0001 GiB) |" in row and "| **no** (+" in row
  assert row.count(" tok/s") == 3 and "MFU ≤" in row


@needs_libtpu
def test_a_program_the_tpu_compiler_refuses_is_a_plan_that_does_not_fit():
  """8,192 rows of 1,024 tokens a step on v5e:2x2: the TPU compiler refuses the train step (it
  needs 108 GiB of temporaries a chip of 16 GiB) instead of reporting it; the plan says it does
  not fit, by how much and what dominates, from the compiler's own figures."""
  c = _config(data=1, fsdp=2, tensor=2)
  c.train.batch_size, c.train.grad_accum, c.train.seq_len = 8192, 1, 1024
  r = plan.plan(c, device_memory_gib=None, prompt_len=40, new_tokens=16, topology="v5e:2x2")
  train = _program(r, "train step")
  assert not r["fits"] and not train["fits"] and "refused" in train["derived"]
  assert train["capacity"] < 16 and train["overshoot"] > 50
  assert train["dominant"] == "activations" and "refused" in train["roofline"]["note"]
  assert "does not fit: train step by" in plan.format_report(r)


@needs_libtpu
def test_a_train_only_plan_without_cost_compiles_the_train_step_alone(tmp_path):
  """--train_only --nocost: the train step's memory for the slice, no sampler program and no
  loop-free cost compile (what makes a 64-chip plan of an 8B model fit this host)."""
  c = _config(data=1, fsdp=2, tensor=2)
  full = plan.plan(c, device_memory_gib=None, prompt_len=40, new_tokens=16, topology="v5e:2x2")
  r = plan.plan(c, device_memory_gib=None, prompt_len=40, new_tokens=16, topology="v5e:2x2",
                train_only=True, cost=False)
  assert [p["what"] for p in r["programs"]] == [_program(full, "train step")["what"]]
  train, full_train = r["programs"][0], _program(full, "train step")
  assert not train["cost"] and "--nocost" in train["roofline"]["note"]
  assert train["total"] == pytest.approx(full_train["total"])  # the same program's memory
  assert r["fits"] and "not computed (--nocost)" in plan.format_report(r)
  # benchmarks.plan_scaling reads the printed reports into docs/plan.md's scaling table
  from benchmarks import plan_scaling
  for name, report in (("a", r), ("b", full)):
    (tmp_path / f"{name}.json").write_text("log line\n" + json.dumps(report) + "\n")
  plan_scaling.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                     "--plot", str(tmp_path / "scaling.png")])
  rs = plan_scaling.rows([plan_scaling.read(str(tmp_path / "a.json"))])
  assert rs[0]["slice"] == "v5e:2x2" and rs[0]["chips"] == 4 and rs[0]["fits"]
  assert rs[0]["gib"] == pytest.approx(train["total"]) and rs[0]["step_ms"] is None
  assert "| v5e:2x2 | 4 |" in plan_scaling.table(rs)
  timed = plan_scaling.rows([plan_scaling.read(str(tmp_path / "b.json"))])[0]
  roof = _program(full, "train step")["roofline"]
  assert timed["step_ms"] == pytest.approx(roof["step_seconds"] * 1e3)
  assert timed["tokens_per_s"] == pytest.approx(roof["tokens_per_s"])
  assert f"{timed['step_ms']:.0f} ms (" in plan_scaling.table([timed])
  assert (tmp_path / "scaling.png").stat().st_size > 0
  # benchmarks.plan_table merges a row's reports program by program, a later file's winning:
  # the full plan's sampler with the train-only plan's train step, and the other way round.
  from benchmarks import plan_table
  rows = plan_table.merged([plan_scaling.read(str(tmp_path / f"{n}.json")) for n in "ab"])
  assert len(rows) == 1 and rows[0]["programs"]["train"]["roofline"] == full_train["roofline"]
  assert set(rows[0]["programs"]) == {"train", "prefill", "decode"}
  line = plan_table.table(plan_table.merged([r, full])).splitlines()[-1]
  assert line.startswith("| tiny | full | v5e:2x2 (4 x 16 GiB) |") and "| fits (" in line
  assert line.count(" tok/s") == 3
  assert plan_table.table(plan_table.merged([full, r])).splitlines()[-1].count(" tok/s") == 2


@needs_libtpu
def test_cost_compiles_turn_the_tpu_compilers_windowed_einsums_off():
  """A windowed einsum (a collective matmul's loop of partial matmuls) has its body counted
  once by cost analysis: Llama-3-8B's step on v4-32 counted 0.63 x the model's FLOPs. Cost
  compiles for TPU meshes turn them off; XLA:CPU, which knows no such options, gets none."""
  from star_jax.engine import chips, memory, sharding
  from star_jax.runtime.compiling import compiling_for
  with compiling_for("tpu"):
    _, devices = chips.topology_devices("v5e:2x2")
    tpu = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1}, devices=devices)
    options = memory.cost_compiler_options(tpu)
  assert options == memory.COST_COMPILER_OPTIONS
  assert not any(options.values()) and all("windowed_einsum" in k for k in options)
  cpu = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
  assert memory.cost_compiler_options(cpu) is None
