"""Every STaR iteration reuses the compiled train step and sampler: a run extended from one
iteration to three compiles nothing more, though iterations 2 and 3 train for other numbers of
steps on a decaying schedule."""

from helpers.runs import load_config
from star_jax import star
from star_jax.runtime import compiling


def _compiles(config, workdir):
  before = len(compiling.COMPILED)
  metrics = star.run(config, workdir)
  assert all(m["train_steps"] > 0 for m in metrics[1:])  # every iteration trained
  return [what for what, _ in compiling.COMPILED[before:]]


def test_iterations_after_the_first_compile_nothing(tmp_path):
  compiling.forget_programs()
  config = load_config("arithmetic")
  config.star.steps_schedule, config.train.schedule = "exponential", "linear"  # new horizons
  config.star.base_steps, config.star.steps_growth = 5, 1.5  # 5, 8, 11 steps
  config.pretrain.steps = 80
  config.star.iterations = 1
  workdir = str(tmp_path / "run")
  one = _compiles(config, workdir)
  assert sum("train step" in w for w in one) == 1  # pretraining's shape too
  assert any("decode" in w or "sample" in w for w in one), one
  config.star.iterations = 3
  assert _compiles(config, workdir) == []


def test_a_resumed_runs_new_process_reads_its_programs_from_the_compilation_cache(
    tmp_path, monkeypatch):
  """What a resumed (or extended) run's fresh process does: the programs the first process
  compiled are read from WORKDIR/compilation_cache (the default), none compiled again."""
  import jax
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)  # the default: the workdir's
  monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
  monkeypatch.setattr(compiling, "CACHE_MIN_COMPILE_S", 0.0)  # tiny programs: keep them all
  session_cache = jax.config.jax_compilation_cache_dir or ""
  config = load_config("arithmetic")
  config.pretrain.steps, config.star.iterations = 20, 1
  workdir = tmp_path / "run"
  try:
    def fresh_process_run():
      compiling.forget_programs()  # nothing compiled in memory, as in a new process
      before, hits = len(compiling.COMPILED), len(compiling.CACHE_HITS)
      star.run(config, workdir)
      return [w for w, _ in compiling.COMPILED[before:]], compiling.CACHE_HITS[hits:]

    compiled, read = fresh_process_run()
    assert compiled and not read
    assert len(list((workdir / "compilation_cache").iterdir())) >= len(compiled)
    config.star.iterations = 2  # the run extended by an iteration, in a new process
    compiled_again, read_again = fresh_process_run()
    assert compiled_again and read_again == compiled_again
  finally:
    compiling.use_cache(session_cache)


def test_a_long_runs_programs_and_open_files_stop_growing(tmp_path):
  """What ``python -m benchmarks.soak`` checks over 30 iterations (docs/performance.md), over
  four: every line of metrics.jsonl records the process's memory, open files and compiled
  programs, and after iteration 1 no program cache gains a program and no file stays open,
  though each iteration draws other questions in small batches (other prompt lengths: a
  cache keyed on an unbucketed length grows here)."""
  from benchmarks import soak
  from star_jax.runtime import resources
  config = load_config("arithmetic")
  config.pretrain.steps = 80  # a model that solves some: every iteration trains
  config.star.iterations = 4
  config.star.questions_per_iteration = 24  # of 48: a new draw every iteration
  config.sample.batch_size = 8  # batches of few prompts: their longest differs between draws
  metrics = star.run(config, tmp_path / "run")
  assert all(m["train_steps"] > 0 for m in metrics[1:])  # 6, 8, 10, 12 steps
  assert all(set(resources.KEYS) <= set(m) for m in metrics)
  assert metrics[-1]["process_rss_mib"] > 0 and metrics[-1]["process_threads"] > 0
  programs = [m["process_compiled_programs"] for m in metrics]
  assert programs[1]["sampler"] > 0 and programs[1]["trainer"] > 0, programs[1]
  assert programs[2:] == [programs[1]] * 3, programs
  files = [m["process_open_files"] for m in metrics]
  assert max(files[2:]) <= max(files[:2]), files
  assert not [f for f in soak.verdict(metrics, reference=1)["failures"]
              if not f.startswith("memory")]
