"""Tree search over a completion's steps, batched over questions (rStar-Math, ReST-MCTS*).

A question's tree starts at its prompt; a node is a completion so far, a whole number of the
task's steps (``Task.steps``: lines, or sentences). Each round, in every question's tree at
once (lockstep, one sampler call for all of them):

1. **select**: from the root, the child with the highest UCT score,
   ``Q + c · sqrt(ln N_parent / N_child)`` (an unvisited child first), down to a leaf;
2. **expand** the leaf: ``width`` samples of its one prompt (prefilled once for all of them)
   each stopped at the next step boundary, one child per distinct step;
3. **value** each new child: ``rollouts`` samples from it to the end of the completion, each
   scored by the task's own check (1 or ``reward_wrong``: rStar-Math's ±1); a
   child that completes the answer itself is scored directly;
4. **back up**: every node on the way to the root counts the rollouts' visits and rewards;
   its Q is their mean. A finished node is never selected again: selection descends only
   into children below which something can still grow.

A question's search spends at most its **budget in sampled tokens** (every expansion and
rollout token counts, so it compares with STaR's and GRPO's budgets): a round's expansion may
take half of what is left, its rollouts the rest, each call's token limits cut to fit (a
rollout cut short reaches no answer: the wrong reward). It stops when the budget is spent or
its tree holds no leaf to expand. Random numbers are a function of (seed, round), and a tree
is plain JSON (``Tree.to_dict``), so a search saved after a round and resumed gives the same
trees. Nothing here reads the task's true steps (``Task.step_correct``).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Callable, Sequence

import numpy as np

from star_jax.config import SearchConfig
from star_jax.tasks import Example, Task

REWARD_RIGHT = 1.0


@dataclasses.dataclass
class Node:
  text: str  # the completion so far (its steps joined)
  parent: int  # -1 for the root
  depth: int
  children: list[int] = dataclasses.field(default_factory=list)
  visits: int = 0
  value_sum: float = 0.0
  terminal: bool = False  # the completion is finished (or may grow no further)
  reward: float | None = None  # a terminal node's own score

  @property
  def q(self) -> float:
    return self.value_sum / self.visits if self.visits else 0.0


@dataclasses.dataclass
class Tree:
  """One question's search tree; ``nodes[0]`` is the root (the empty completion)."""

  question: str  # the example's id
  nodes: list[Node] = dataclasses.field(default_factory=lambda: [Node("", -1, 0)])
  tokens: int = 0  # tokens sampled so far
  rounds: int = 0
  done: bool = False

  def uct(self, parent: Node, child: Node, c: float) -> float:
    if child.visits == 0:
      return math.inf
    return child.q + c * math.sqrt(math.log(max(parent.visits, 1)) / child.visits)

  def closed(self, i: int) -> bool:
    """Whether nothing below node ``i`` can grow: it is finished, or all its children are."""
    node = self.nodes[i]
    return node.terminal or (bool(node.children) and all(self.closed(j) for j in node.children))

  def select(self, c: float) -> int | None:
    """The leaf a round expands: down from the root by UCT among the children that can still
    grow; None when none can (the tree is exhausted)."""
    i = 0
    if self.closed(0):
      return None
    while self.nodes[i].children:
      node = self.nodes[i]
      open_ = [j for j in node.children if not self.closed(j)]
      scores = [self.uct(node, self.nodes[j], c) for j in open_]
      i = open_[int(np.argmax(scores))]  # the first of equals: deterministic
    return i

  def back_up(self, i: int, rewards: Sequence[float]) -> None:
    while i >= 0:
      self.nodes[i].visits += len(rewards)
      self.nodes[i].value_sum += float(sum(rewards))
      i = self.nodes[i].parent

  def add(self, parent: int, text: str) -> int:
    self.nodes.append(Node(text, parent, self.nodes[parent].depth + 1))
    self.nodes[parent].children.append(len(self.nodes) - 1)
    return len(self.nodes) - 1

  def traces(self) -> list[tuple[str, float, list[float]]]:
    """Every finished completion with its reward and the Q of each of its steps' nodes."""
    out = []
    for i, node in enumerate(self.nodes):
      if node.terminal and node.reward is not None:
        qs, j = [], i
        while j > 0:
          qs.append(self.nodes[j].q)
          j = self.nodes[j].parent
        out.append((node.text, node.reward, qs[::-1]))
    return out

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "Tree":
    return cls(d["question"], [Node(**n) for n in d["nodes"]], d["tokens"], d["rounds"],
               d["done"])


def reward_of(task: Task, ex: Example, completion: str, cfg: SearchConfig) -> float:
  """The task's own check of a finished completion."""
  right = task.is_correct(task.extract_answer(completion), ex)
  return REWARD_RIGHT if right else cfg.reward_wrong


def finished(task: Task, text: str) -> bool:
  return any(s in text for s in task.stop_strings)


def search_round(trees: list[Tree], examples: list[Example], prompts: list[list[int]],
                 sampler, params, task: Task, tokenizer, sampling, cfg: SearchConfig,
                 seed: int) -> None:
  """One round in every tree not done (selection, one batched expansion, one batched
  valuation, back-up); ``prompts[i]`` is question ``i``'s prompt ids."""
  limit = task.max_new_tokens
  leaves: list[tuple[int, int]] = []  # (tree, node) to expand
  for t, tree in enumerate(trees):
    if tree.done:
      continue
    i = tree.select(cfg.c_uct)
    if i is None:  # every path finished
      tree.done = True
      continue
    # Half of what is left may go to this expansion, the rest to its rollouts: each call's
    # limits are cut so that even its longest samples stay inside the budget.
    left = cfg.budget_tokens - tree.tokens
    if left // (2 * cfg.width) < 1:
      tree.done = True
      continue
    leaves.append((t, i))
  if not leaves:
    return
  decode = tokenizer.decode
  step = max(tree.rounds for tree in trees)  # the same on a resumed search
  round_seed = int(np.random.default_rng([seed, step, 59]).integers(2**31))
  step_limits = [min(cfg.step_tokens, (cfg.budget_tokens - trees[t].tokens) // (2 * cfg.width))
                 for t, _ in leaves]
  out = sampler.sample(params, [prompts[t] + tokenizer.encode(trees[t].nodes[i].text)
                                for t, i in leaves],
                       step_limits, sampling, n=cfg.width, seed=round_seed,
                       stop_strings=tuple(task.step_boundaries) + tuple(task.stop_strings),
                       decode_fn=decode)
  new: list[tuple[int, int]] = []  # (tree, child) to value by rollouts
  for row, (t, i) in enumerate(leaves):
    tree, seen = trees[t], set()
    for g in range(cfg.width):
      ids = out.sequences(row, g)
      tree.tokens += len(ids)
      text = _first_step(task, decode(ids))
      if not text or text in seen:
        continue
      seen.add(text)
      c = tree.add(i, tree.nodes[i].text + text)
      child = tree.nodes[c]
      if finished(task, child.text) or child.depth >= cfg.max_depth:
        child.terminal = True
        child.reward = reward_of(task, examples[t], child.text, cfg)
        tree.back_up(c, [child.reward])
      else:
        new.append((t, c))
    if not tree.nodes[i].children:  # every sample was empty: nothing grows from here
      tree.nodes[i].terminal = True
      tree.nodes[i].reward = reward_of(task, examples[t], tree.nodes[i].text, cfg)
      tree.back_up(i, [tree.nodes[i].reward])
  children = collections.Counter(t for t, _ in new)
  rollout_limits = {t: min(limit, (cfg.budget_tokens - trees[t].tokens)
                           // (children[t] * cfg.rollouts)) for t in children}
  for t, limit_t in rollout_limits.items():
    if limit_t < 1:  # no budget left to value them: the search of this question ends
      trees[t].done = True
  new = [(t, c) for t, c in new if rollout_limits[t] >= 1]
  if new:
    out = sampler.sample(params, [prompts[t] + tokenizer.encode(trees[t].nodes[c].text)
                                  for t, c in new],
                         [rollout_limits[t] for t, _ in new], sampling, n=cfg.rollouts,
                         seed=round_seed + 1, stop_strings=tuple(task.stop_strings),
                         decode_fn=decode)
    for row, (t, c) in enumerate(new):
      tree, rewards = trees[t], []
      for g in range(cfg.rollouts):
        ids = out.sequences(row, g)
        tree.tokens += len(ids)
        rewards.append(reward_of(task, examples[t], tree.nodes[c].text + decode(ids), cfg))
      tree.back_up(c, rewards)
  for t in {t for t, _ in leaves}:
    trees[t].rounds += 1


def _first_step(task: Task, text: str) -> str:
  """The first step of a sample stopped at a step boundary (or at the end of the answer)."""
  steps = task.steps(text)
  return steps[0] if steps else ""


def search(trees: list[Tree], examples: list[Example], prompts: list[list[int]], sampler,
           params, task: Task, tokenizer, sampling, cfg: SearchConfig, seed: int,
           on_round: Callable[[list[Tree]], None] | None = None, max_rounds: int = 10_000
           ) -> list[Tree]:
  """Rounds until every tree is done (budget spent, or nothing left to grow); ``on_round``
  after each (to save the trees: a search resumed from them continues the same)."""
  for _ in range(max_rounds):
    if all(tree.done for tree in trees):
      break
    before = [(tree.rounds, tree.done) for tree in trees]
    search_round(trees, examples, prompts, sampler, params, task, tokenizer, sampling, cfg,
                 seed)
    for tree in trees:  # a tree whose every path is finished is done
      if not tree.done and tree.closed(0):
        tree.done = True
    if on_round is not None:
      on_round(trees)
    if before == [(tree.rounds, tree.done) for tree in trees]:
      break
  return trees
