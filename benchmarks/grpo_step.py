r"""One GRPO policy step: star_jax's against Tunix's ``GRPOLearner``, same model, same work.

  python -m benchmarks.grpo_step --questions=4 --group=4 --max_new_tokens=64 --steps=4

Both in one process, one after the other, on the same CPU:

  model       SmolLM2-135M-Instruct from its GGUF wheel, float32. Tunix loads it through its
              own Llama 3 class (``tunix.models.llama3``: SmolLM2 is a Llama, 30 layers, 576
              wide, 9 heads, 3 KV heads, tied embeddings, rope theta 1e5) from the Hugging
              Face directory ``star_jax.export`` writes of it; both compute the same logits
              (checked: the first prompt's log-probs at every position, the largest gap printed;
              Tunix 0.1.7's attention ignores its config's rope theta, so the benchmark hands
              SmolLM2's 1e5 to the function it calls)
  questions   ``configs/arithmetic_smollm2.py``'s problems, the same token ids in both (Tunix
              reads them through our tokenizer), Q a step, G samples each at temperature 0.7
  lengths     ``--stops=none`` (the default): every sample runs to exactly ``max_new_tokens``:
              neither side has an end token or a stop string, so both sample, score and train
              the same number of tokens. ``--stops=task``: the workload a run has, each sample
              ends where the task's answer ends (its stop string ``\n\n``, one token of
              SmolLM2's, and the end tokens: Tunix's ``eos_tokens``), up to ``max_new_tokens``;
              each side trains its rows as it lays them out (star_jax: the samples packed
              several a row, ``rl.pack_rows``, or with ``--no_pack`` one a row padded to the
              step's longest; Tunix: every completion padded to ``max_new_tokens``; the
              records count the token slots a step computes). Use it with
              a checkpoint that has learned the format (the warm-started M_0 of
              ``configs/arithmetic_smollm2.py``), whose samples end there
  the step    GRPO with the frozen reference (KL beta 0.04, Tunix's default), clip 0.2, one
              update per batch (mu = 1), Adam at 1e-6, Q x G rows in one micro-batch
  phases      sample (rollout and reward), reference log-probs + loss + update, and the whole
              step; star_jax's from its policy step's own timers (``GRPO.policy_step``),
              Tunix's by timing its cluster's ``generate``, ``get_ref_per_token_logps``
              and ``update_actor``; the first step compiles and is left out (medians of the rest)

Prints one JSON line per phase ({"phase", "star_jax_s", "tunix_s", "ratio", counts}) and
appends them to docs/benchmarks/grpo_step.jsonl. Tunix is not a dependency of star_jax and its
0.1.7 pins safetensors < 0.8 (we pin 0.8.0): install it beside ours without its pins
(docs/benchmarks.md, "GRPO step"):

  pip install -e ".[bench]" && pip install --no-deps google-tunix==0.1.7 && \
      pip install google_metrax==0.2.4 jaxtyping==0.3.11 perfetto==0.59.1 pandas grain qwix clu
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
import time

import numpy as np

from benchmarks.common import machine_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "docs", "benchmarks", "grpo_step.jsonl")
BETA, EPSILON, LR, TEMPERATURE = 0.04, 0.2, 1e-6, 0.7


def star_jax_config(questions: int, group: int, max_new_tokens: int, checkpoint: str,
                    pack_rows: bool = True):
  import importlib.util
  path = os.path.join(ROOT, "configs", "arithmetic_smollm2.py")
  spec = importlib.util.spec_from_file_location("arithmetic_smollm2", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.model.checkpoint, c.pretrain.steps = checkpoint, 0
  c.star.method, c.star.samples_per_question, c.star.temperature = "grpo", group, TEMPERATURE
  c.star.max_new_tokens = max_new_tokens
  c.rl.questions_per_step, c.rl.kl_beta, c.rl.clip_epsilon = questions, BETA, EPSILON
  c.rl.log_kl, c.rl.pack_rows = True, pack_rows
  c.train.batch_size, c.train.grad_accum = questions * group, 1
  c.train.learning_rate, c.train.warmup_steps, c.train.weight_decay = LR, 0, 0.0
  c.train.clip_norm = 0.0
  c.sample.batch_size = questions * group
  return c


def build_star_jax(args, workdir: str):
  """star_jax's GRPO method on the model, its sampler without end tokens or stop strings."""
  from star_jax import config as config_lib
  from star_jax.engine.trainer import Trainer
  from star_jax.experiment.build import build, make_sampler
  from star_jax.sampling import Sampler
  from star_jax.star import finetune as ft
  from star_jax.star.grpo import GRPO
  cfg = config_lib.load(star_jax_config(args.questions, args.group, args.max_new_tokens,
                                        args.checkpoint, not args.no_pack))
  exp = build(cfg, workdir)
  if args.stops == "task":
    sampler = make_sampler(exp, cfg)
  else:
    exp.task.stop_strings = ()  # every row samples max_new_tokens
    sampler = Sampler(exp.model_cfg, exp.graphdef, exp.mesh, end_ids=(),
                      pad_id=exp.tokenizer.pad_id, batch_size=cfg.sample.batch_size)
  method = GRPO(cfg, exp, sampler, workdir)
  trainer = Trainer(exp.graphdef, exp.mesh, ft.optim_config(cfg.train, args.steps),
                    master_dtype=cfg.train.master_dtype, rounding=exp.rounding,
                    rounding_seed=exp.rounding_seed, loss=method.loss)
  return cfg, exp, method, trainer


def run_star_jax(args, cfg, exp, method, trainer) -> dict:
  ref = exp.sampling_copy(exp.params)
  pool = exp.train_set

  def steps_from_m0():
    state, steps = trainer.init(exp.params, copy=True), []
    for s in range(1, args.steps + 1):
      t0 = time.perf_counter()
      state, record = method.policy_step(1, s, trainer, state, pool, ref)
      record["total_seconds"] = time.perf_counter() - t0
      steps.append(record)
    return steps

  # Steps of different lengths compile their own programs (a run's steps reuse them): the
  # same steps again from M_0 (the same samples and shapes) time them compiled.
  steps = steps_from_m0()
  again = steps_from_m0() if args.compiled else []
  out = {k: [r[f"{k}_seconds"] for r in again] for k in ("sample", "train", "total")}
  return {**{f"compiled_{k}": v for k, v in out.items()},
          "sample": [r["sample_seconds"] for r in steps[1:]],
          "train": [r["train_seconds"] for r in steps[1:]],
          "total": [r["total_seconds"] for r in steps[1:]],
          "tokens_sampled": [r["tokens_sampled"] for r in steps],
          "rows_trained": [r["trained_rows"] for r in steps],
          "token_slots": [r["token_slots"] for r in steps],
          "reward_mean": float(np.mean([r["reward_mean"] for r in steps])),
          "loss": [r.get("loss") for r in steps], "kl": [r.get("kl") for r in steps]}


class TunixTokenizer:
  """Our tokenizer as Tunix's ``TokenizerAdapter`` reads one (encode, decode, bos/eos/pad)."""

  def __init__(self, tok, never: int, eos: int | None = None):
    self.tok, self.never, self.eos = tok, never, eos

  def encode(self, text, **kwargs):
    return list(self.tok.encode_prompt(str(text)))

  def decode(self, ids, **kwargs):
    return self.tok.decode([int(i) for i in ids if int(i) != self.pad_id()])

  def bos_id(self):
    return getattr(self.tok, "bos_id", None) or self.never

  def eos_id(self):
    return self.never if self.eos is None else self.eos  # never: rows run to max_new_tokens

  def pad_id(self):
    return self.tok.pad_id


def tunix_model(hf_dir: str, mesh):
  """SmolLM2-135M in Tunix's Llama 3 class, from the exported directory."""
  import jax.numpy as jnp
  from tunix.models.llama3 import model as llama3, params as llama3_params
  config = llama3.ModelConfig(num_layers=30, vocab_size=49152, embed_dim=576, hidden_dim=1536,
                              num_heads=9, head_dim=64, num_kv_heads=3, rope_theta=100000,
                              norm_eps=1e-5, weight_tying=True)
  return llama3_params.create_model_from_safe_tensors(hf_dir, config, mesh, dtype=jnp.float32)


def same_logits(exp, actor, prompt: list[int], rope_base: float | None = None) -> float:
  """The largest difference of the two models' log-probs at any position of ``prompt`` (ours
  with ``rope_base`` instead of its own where given)."""
  import jax
  import jax.numpy as jnp
  from star_jax.engine import params as params_lib
  from star_jax.engine.decoder import causal_mask
  tokens = jnp.asarray([prompt], jnp.int32)
  positions = jnp.arange(len(prompt))[None]
  mask = causal_mask(jnp.ones_like(tokens))
  graphdef = exp.graphdef
  if rope_base is not None:
    # the same tree, another rope
    graphdef, _ = params_lib.abstract_model(exp.model_cfg.replace(rope_base=rope_base))
  ours = params_lib.merge(graphdef, exp.params)
  h, _ = ours(tokens, positions, mask)
  mine = jax.nn.log_softmax(ours.logits(h), axis=-1)
  theirs, _ = actor(tokens, positions, None, mask)
  theirs = jax.nn.log_softmax(theirs.astype(jnp.float32), axis=-1)
  return float(jnp.max(jnp.abs(mine - theirs)))


def run_tunix(args, exp, hf_dir: str, questions) -> dict:
  import jax
  import optax
  from grain import python as grain
  from tunix.rl import rl_cluster as rl_cluster_lib
  from tunix.rl.grpo import grpo_learner
  from tunix.rl.rollout import base_rollout

  # Tunix's models read their shardings from an automatic mesh (its tests' setup)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(1, -1), ("fsdp", "tp"))
  actor, reference = tunix_model(hf_dir, mesh), tunix_model(hf_dir, mesh)
  prompt = exp.tokenizer.encode_prompt(exp.task.prompt(questions[0], hint=False, few_shot=False))
  # Tunix 0.1.7's Llama 3 rotates with theta 1e6 whatever its config says (its attention
  # calls the module's apply_rope without config.rope_theta); SmolLM2's is 1e5. Past
  # position 0 the log-probs differ by that alone: with ours at 1e6 they agree. The
  # benchmark then gives Tunix's apply_rope SmolLM2's theta, so both sample one model.
  gap_same_rope = same_logits(exp, actor, prompt, rope_base=1e6)
  from tunix.models.llama3 import model as llama3
  llama3.apply_rope = functools.partial(llama3.apply_rope, rope_theta=exp.model_cfg.rope_base)
  gap = same_logits(exp, actor, prompt)
  print(json.dumps({"logprob_max_abs_difference": gap,
                    "logprob_max_abs_difference_ours_at_tunix_rope": gap_same_rope,
                    "prompt_tokens": len(prompt)}))
  never = exp.model_cfg.vocab_size + 7  # an id no row can sample
  eos_tokens = [never]
  if args.stops == "task":  # the end tokens and the stop strings spelled as one token
    from star_jax.experiment.build import stop_sequences
    eos_tokens = [ids[0] for ids in stop_sequences(exp.tokenizer, exp.task.stop_strings)
                  if len(ids) == 1] + list(exp.tokenizer.end_ids)
  tokenizer = TunixTokenizer(exp.tokenizer, never, None if args.stops == "none" else eos_tokens[0])
  task = exp.task
  prompts = [task.prompt(ex, hint=False, few_shot=False) for ex in questions]
  longest = max(len(tokenizer.encode(p)) for p in prompts)
  by_id = {ex.id: ex for ex in questions}

  rewards: list[float] = []

  def reward(prompts, completions, answer, **kwargs):
    out = [float(task.is_correct(task.extract_answer(str(c)), by_id[str(a)]))
           for c, a in zip(completions, answer)]
    rewards.extend(out)
    return out

  cluster_config = rl_cluster_lib.ClusterConfig(
      role_to_mesh={rl_cluster_lib.Role.ACTOR: mesh, rl_cluster_lib.Role.REFERENCE: mesh,
                    rl_cluster_lib.Role.ROLLOUT: mesh},
      rollout_engine="vanilla", offload_to_cpu=False,
      training_config=rl_cluster_lib.RLTrainingConfig(
          actor_optimizer=optax.adam(LR), eval_every_n_steps=10 ** 6, max_steps=args.steps),
      rollout_config=base_rollout.RolloutConfig(
          max_tokens_to_generate=args.max_new_tokens, max_prompt_length=longest,
          kv_cache_size=-(-longest // 128) * 128 + args.max_new_tokens + 8,
          temperature=TEMPERATURE,
          top_p=1.0, top_k=None, eos_tokens=eos_tokens))
  cluster = rl_cluster_lib.RLCluster(actor=actor, reference=reference, tokenizer=tokenizer,
                                     cluster_config=cluster_config)
  learner = grpo_learner.GRPOLearner(
      rl_cluster=cluster, reward_fns=[reward],
      algo_config=grpo_learner.GRPOConfig(num_generations=args.group, num_iterations=1,
                                          beta=BETA, epsilon=EPSILON))
  spans: dict[str, list[float]] = {"generate": [], "ref": [], "update": []}
  starts: list[float] = []
  lengths: list[int] = []

  def timed(name, fn, on_start=None):
    def wrapper(*a, **kw):
      if on_start:
        on_start()
      t0 = time.perf_counter()
      out = fn(*a, **kw)
      jax.block_until_ready(getattr(out, "tokens", out) if name == "generate" else out)
      spans[name].append(time.perf_counter() - t0)
      if name == "generate":
        lengths.extend(len(t) for t in out.tokens)
      return out
    return wrapper

  cluster.generate = timed("generate", cluster.generate,
                           on_start=lambda: starts.append(time.perf_counter()))
  cluster.get_ref_per_token_logps = timed("ref", cluster.get_ref_per_token_logps)
  cluster.update_actor = timed("update", cluster.update_actor)
  # the same questions, step by step, as star_jax asks them
  items = [{"prompts": p, "answer": ex.id} for p, ex in zip(prompts, questions)]
  data = grain.MapDataset.source(items).batch(args.questions)  # arrays: Tunix repeats them G x
  learner.train(data)
  end = time.perf_counter()
  totals = [b - a for a, b in zip(starts, starts[1:] + [end])]
  return {"sample": spans["generate"][1:],
          "train": [r + u for r, u in zip(spans["ref"][1:], spans["update"][1:])],
          "total": totals[1:], "tokens_sampled": lengths, "reward_mean": float(np.mean(rewards)),
          "steps": len(starts), "logprob_gap": gap, "logprob_gap_same_rope": gap_same_rope,
          # its layout: every prompt padded to the longest, every completion to max_new_tokens
          "token_slots": len(questions) // args.steps * args.group * (longest
                                                                      + args.max_new_tokens)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--questions", type=int, default=4)
  parser.add_argument("--group", type=int, default=4)
  parser.add_argument("--max_new_tokens", type=int, default=64)
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--checkpoint", default="smollm2-135m-instruct")
  parser.add_argument("--stops", choices=("none", "task"), default="none",
                      help="none: every sample runs to max_new_tokens; task: samples end at the "
                           "task's stop string or an end token, as in a run")
  parser.add_argument("--compiled", action="store_true",
                      help="star_jax's steps a second time from M_0 (the same samples and "
                           "shapes: every program compiled), recorded as star_jax_compiled_s")
  parser.add_argument("--no_pack", action="store_true",
                      help="star_jax trains one sample a row (rl.pack_rows=False)")
  parser.add_argument("--only", choices=("star_jax", "tunix", "both"), default="both")
  parser.add_argument("--out", default=OUT)
  args = parser.parse_args(argv)
  from star_jax.hub.hf_export import export
  from star_jax.experiment.models import load_model

  with tempfile.TemporaryDirectory() as tmp:
    cfg, exp, method, trainer = build_star_jax(args, tmp)
    # the questions star_jax's steps ask, in order, for Tunix to ask too
    questions = []
    for s in range(1, args.steps + 1):
      rng = np.random.default_rng([cfg.seed, 1, s, 31])
      picked = rng.choice(len(exp.train_set), args.questions, replace=False)
      questions += [exp.train_set[i] for i in picked]
    ours = run_star_jax(args, cfg, exp, method, trainer) if args.only != "tunix" else None
    peer = None
    if args.only != "star_jax":
      hf_dir = os.path.join(tmp, "hf")
      pre = load_model(args.checkpoint, exp.mesh, dtype="float32")
      export(pre.model_cfg, pre.params, pre.tokenizer, hf_dir)
      peer = run_tunix(args, exp, hf_dir, questions)
  info = machine_info()
  records = []
  for phase in ("sample", "train", "total"):
    rec = {"benchmark": "grpo_step", "phase": phase, "questions": args.questions,
           "group": args.group, "max_new_tokens": args.max_new_tokens, "stops": args.stops,
           "checkpoint": args.checkpoint, "pack_rows": not args.no_pack,
           "timed_steps": args.steps - 1}
    if ours:
      rec["star_jax_s"] = round(statistics.median(ours[phase]), 3)
      rec["star_jax_tokens_sampled_per_step"] = round(statistics.mean(ours["tokens_sampled"]))
      rec["star_jax_reward_mean"] = round(ours["reward_mean"], 4)
      rec["star_jax_token_slots_per_step"] = round(statistics.mean(ours["token_slots"]))
      if ours[f"compiled_{phase}"]:
        rec["star_jax_compiled_s"] = round(statistics.median(ours[f"compiled_{phase}"]), 3)
    if peer:
      rec["tunix_s"] = round(statistics.median(peer[phase]), 3)
      rec["tunix_tokens_sampled_per_step"] = sum(peer["tokens_sampled"]) // max(peer["steps"], 1)
      rec["tunix_reward_mean"] = round(peer["reward_mean"], 4)
      rec["tunix_token_slots_per_step"] = peer["token_slots"]
    if ours and peer:
      rec["ratio"] = round(rec["tunix_s"] / rec["star_jax_s"], 2)
    rec.update(info)
    records.append(rec)
    print(json.dumps(rec))
  if ours:
    print(json.dumps({"star_jax_loss": ours["loss"], "star_jax_kl": ours["kl"],
                      "star_jax_rows_trained": ours["rows_trained"]}))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "a") as f:
    for rec in records:
      f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
  main()
