"""``star.method=mcts``: rStar-Math's self-evolution, its first round (no process reward model
yet). Each iteration searches a tree over the steps of each question's completion from
M_{n-1} (``star/search.py``: UCT, ``search.width`` children an expansion, ``search.rollouts``
rollouts valuing each new node by the task's own check), keeps the right finished traces with
the highest mean Q (``star.max_kept_per_question`` a question, distinct texts), and
fine-tunes on them as STaR does (from M_0 or M_{n-1}: ``star.restart_from_base``). No hint:
what the search does not reach is not trained on.

A question's search spends at most ``search.budget_tokens`` sampled tokens (expansions and
rollouts), so its budget reads against STaR's samples. Searches run a shard of questions at
a time (``sample.shard_size``), each shard saved once searched, so a killed iteration resumes
at its first unsearched shard. Kept rationales carry their trace's mean Q (``q`` in
``kept.jsonl``).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from star_jax.experiment import workdir as wd
from star_jax.runtime import distributed, failpoints
from star_jax.runtime.errors import ConfigError
from star_jax.runtime.progress import progress
from star_jax.star import rollout
from star_jax.star import search as search_lib
from star_jax.star.iteration import IterationResult, Star
from star_jax.tasks import Example


class Mcts(Star):
  """Star's iteration with the samples found by a tree search over steps."""

  name = "mcts"
  temperature_key = "search.temperature"  # star.temperature is not read

  @classmethod
  def check(cls, config) -> None:
    super().check(config)
    s = config.search
    if s.width < 1 or s.rollouts < 1 or s.step_tokens < 1 or s.max_depth < 1:
      raise ConfigError(f"search.width, search.rollouts, search.step_tokens and "
                        f"search.max_depth must be >= 1, got {s.width}, {s.rollouts}, "
                        f"{s.step_tokens} and {s.max_depth}")
    if s.temperature <= 0 or config.star.top_k == 1:
      raise ConfigError(f"star.method=mcts expands a node into search.width={s.width} sampled "
                        f"steps: set search.temperature > 0 (e.g. 0.7) and star.top_k != 1")

  @classmethod
  def temperatures(cls, config) -> tuple:
    return (config.search.temperature,)

  def sampling(self, temperature=None):
    return super().sampling(self.config.search.temperature if temperature is None
                            else temperature)

  @classmethod
  def verifier_texts(cls, config) -> int:
    return 0  # its traces share prefixes: not the independent samples V-STaR pairs up

  def search_config(self):
    """The search keys, the budget resolved (0: two rounds' full width, each child with its
    rollouts to the longest completion: width x (1 + rollouts) x max_new_tokens x 2)."""
    s = self.config.search
    budget = s.budget_tokens or s.width * (1 + s.rollouts) * self.task.max_new_tokens * 2
    return dataclasses.replace(s, budget_tokens=budget)

  def iteration(self, n: int, base, model) -> IterationResult:
    self._searched = {"tokens": 0, "nodes": 0, "rounds": 0, "traces": 0, "right_traces": 0}
    self._q: dict[tuple[str, str], float] = {}
    result = super().iteration(n, base, model)
    result.extra.update({f"search_{k}": v for k, v in self._searched.items()},
                        tokens_sampled=self._searched["tokens"])
    for record in result.kept:
      record["q"] = self._q.get((record["id"], record["rationale"]))
    return result

  def rationalize(self, n, model, failed, rng, seed):
    return [], 0

  def sample(self, n: int, model, questions: list[Example], *, hint: bool, phase: str,
             few_shot: bool, seed: int) -> tuple[list[rollout.Generation], int]:
    """Every question's search, its finished traces as the samples (highest mean Q first)."""
    cfg = self.search_config()
    asked, prompts = rollout.fitting_prompts(self.task, self.tokenizer, self.sampler, questions,
                                             hint=False, few_shot=few_shot)
    params = self.exp.sampling_copy(model)
    shards = wd.Shards(wd.iteration_dir(self.workdir, n, "search_shards"))
    size = self.config.sample.shard_size
    logging.info("iteration %d: searching %d questions (width %d, %d rollouts a node, %d "
                 "sampled tokens a question)", n, len(asked), cfg.width, cfg.rollouts,
                 cfg.budget_tokens)
    rows: list[dict] = []
    chunks = range(0, len(asked), size)
    with progress(len(chunks), f"iter {n} search", "shard") as bar:
      for k, lo in enumerate(chunks):
        examples, ids = asked[lo:lo + size], [ex.id for ex in asked[lo:lo + size]]
        saved = shards.load(k, ids)
        if saved is None:
          trees = search_lib.search([search_lib.Tree(i) for i in ids], examples,
                                    prompts[lo:lo + size], self.sampler, params, self.task,
                                    self.tokenizer, self.sampling(), cfg, seed=seed * 1009 + k)
          saved = [_summary(tree) for tree in trees]
          shards.save(k, saved)
          failpoints.hit("search_shard")
        rows.extend(saved)
        bar.update(1)
        distributed.safe_point(f"iter {n} search", k + 1, len(chunks))
    gens = []
    for ex, row in zip(asked, rows):
      gen = rollout.Generation.of(self.task, ex, [t for t, _ in row["traces"]])
      gens.append(gen)
      for text, q in row["traces"]:
        self._q.setdefault((ex.id, self.task.split_rationale(text)), q)
      self._searched["tokens"] += row["tokens"]
      self._searched["nodes"] += row["nodes"]
      self._searched["rounds"] += row["rounds"]
      self._searched["traces"] += len(row["traces"])
      self._searched["right_traces"] += sum(gen.correct)
    return gens, len(questions) - len(asked)


def _summary(tree: search_lib.Tree) -> dict:
  """What an iteration keeps of a searched tree: its finished traces by mean Q (highest
  first) and what the search spent."""
  traces = sorted(((text, float(np.mean(qs)) if qs else 0.0)
                   for text, _, qs in tree.traces()), key=lambda tq: -tq[1])
  return {"id": tree.question, "traces": traces, "tokens": tree.tokens,
          "nodes": len(tree.nodes), "rounds": tree.rounds}
