"""The tree search over steps on a toy task whose tree is known (a scripted sampler answers
each completion-so-far with its scripted next steps and rollouts): selection by UCT, Q after
rollouts by hand, the budget never exceeded, a resumed search equal to an uninterrupted one,
one sampler call per round for every question."""

import json
import math

from star_jax.sampling import SamplingParams
from star_jax.star import search as search_lib
from star_jax.config import SearchConfig
from star_jax.star.search import Node, Tree
from star_jax.tasks import Example, Task
from helpers.scripted import CharTokenizer


class ToyTask(Task):
  name = "toy"
  max_new_tokens = 16

  def prompt(self, ex, hint=False, few_shot=True):
    return f"Q{ex.question}:"

  def extract_answer(self, text):
    lines = [line for line in text.split("\n") if line.startswith("ans=")]
    return lines[-1][4:] if lines else None

  def is_correct(self, prediction, ex):
    return prediction == ex.answer


class KnownTree:
  """Expansions (stopped at a step boundary) answer ``steps[completion so far]``, rollouts
  ``ends[completion so far]``, cycling over the listed texts; every call recorded."""

  def __init__(self, steps, ends):
    self.steps, self.ends, self.calls = steps, ends, []

  def sample(self, params, prompts, max_new_tokens, sampling, n=1, seed=0, stop_strings=(),
             decode_fn=None):
    texts = [decode_fn(p).split(":", 1)[1] for p in prompts]
    table = self.steps if "\n" in stop_strings else self.ends
    self.calls.append((texts, n, "\n" in stop_strings))
    limits = ([max_new_tokens] * len(texts) if isinstance(max_new_tokens, int)
              else list(max_new_tokens))  # a sampler stops a row at its limit
    rows = [[table.get(t, ["ans=0\n\n"])[g % len(table.get(t, [0]))][:limit] for g in range(n)]
            for t, limit in zip(texts, limits)]  # a text cut short ends in a wrong answer
    tok = CharTokenizer()

    class Out:
      def sequences(self, i, g=0):
        return tok.encode(rows[i][g])
    return Out()


STEPS = {"": ["a\n", "b\n", "a\n"], "b\n": ["ans=1\n\n", "c\n"], "a\n": ["d\n"],
         "b\nc\n": ["ans=2\n\n"], "a\nd\n": ["ans=1\n\n"]}
ENDS = {"a\n": ["ans=1\n\n", "ans=2\n\n"], "b\n": ["ans=1\n\n", "ans=1\n\n"],
        "b\nc\n": ["ans=2\n\n", "ans=1\n\n"], "a\nd\n": ["ans=1\n\n", "ans=1\n\n"]}
CFG = SearchConfig(width=3, rollouts=2, c_uct=1.0, budget_tokens=10_000, step_tokens=8)


def _run(rounds, trees=None, examples=None):
  task, tok = ToyTask(), CharTokenizer()
  examples = examples or [Example(id="q0", question="0", answer="1"),
                          Example(id="q1", question="1", answer="1")]
  trees = trees or [Tree(ex.id) for ex in examples]
  sampler = KnownTree(STEPS, ENDS)
  prompts = [tok.encode(task.prompt(ex)) for ex in examples]
  for _ in range(rounds):
    search_lib.search_round(trees, examples, prompts, sampler, None, task, tok,
                            SamplingParams(temperature=1.0), CFG, seed=0)
  return trees, sampler


def test_q_after_the_first_round_is_the_mean_of_the_rollouts_rewards():
  (tree, _), sampler = _run(1)
  texts = {n.text: n for n in tree.nodes}
  assert sorted(texts) == ["", "a\n", "b\n"]  # the duplicate "a\n" is one child
  assert (texts["a\n"].visits, texts["a\n"].q) == (2, 0.0)  # +1, -1
  assert (texts["b\n"].visits, texts["b\n"].q) == (2, 1.0)  # +1, +1
  assert (tree.nodes[0].visits, tree.nodes[0].q) == (4, 0.5)
  # one expansion call and one rollout call for both questions, k and R samples a prompt
  assert [(len(texts), n, expand) for texts, n, expand in sampler.calls] == [
      (2, 3, True), (4, 2, False)]


def test_selection_follows_uct_and_a_finished_step_is_scored_by_the_check():
  (tree, _), _ = _run(2)  # round 2 expands "b\n" (UCT 1 + sqrt(ln 4 / 2) > 0 + the same)
  texts = {n.text: n for n in tree.nodes}
  assert texts["b\nans=1\n\n"].terminal and texts["b\nans=1\n\n"].reward == 1.0
  c = texts["b\nc\n"]
  assert (c.visits, c.q) == (2, 0.0)  # ans=2 (-1), ans=1 (+1)
  assert texts["b\n"].visits == 2 + 1 + 2 and math.isclose(texts["b\n"].q, (2 + 1 + 0) / 5)
  # a hand-made tree: the child with the larger Q + c sqrt(ln N / n) is chosen
  hand = Tree("x", [Node("", -1, 0, [1, 2], visits=10), Node("p", 0, 1, visits=8, value_sum=4),
                    Node("q", 0, 1, visits=2, value_sum=0)])
  scores = [0.5 + math.sqrt(math.log(10) / 8), 0.0 + math.sqrt(math.log(10) / 2)]
  assert hand.select(1.0) == 1 + int(scores[1] > scores[0])
  assert hand.select(0.0) == 1  # no exploration: the higher Q


def test_the_budget_in_sampled_tokens_is_never_exceeded():
  task, tok = ToyTask(), CharTokenizer()
  for budget in (5, 30, 60, 120, 250, 400):  # below 2 x width: no round can start
    cfg = SearchConfig(width=3, rollouts=2, budget_tokens=budget, step_tokens=8)
    examples = [Example(id="q0", question="0", answer="1")]
    trees = search_lib.search([Tree("q0")], examples, [tok.encode(task.prompt(examples[0]))],
                              KnownTree(STEPS, ENDS), None, task, tok,
                              SamplingParams(temperature=1.0), cfg, seed=0)
    assert trees[0].done and trees[0].tokens <= budget, (budget, trees[0].tokens)
    assert (trees[0].tokens > 0) == (budget >= 6)


def test_a_search_saved_after_a_round_resumes_to_the_same_trees():
  whole, _ = _run(4)
  half, _ = _run(2)
  saved = [Tree.from_dict(json.loads(json.dumps(t.to_dict()))) for t in half]
  resumed, _ = _run(2, trees=saved)
  assert [t.to_dict() for t in resumed] == [t.to_dict() for t in whole]
  # the traces the search verified: every finished completion, its reward, its steps' Q
  traces = whole[0].traces()
  assert ("b\nans=1\n\n", 1.0) in [(text, r) for text, r, _ in traces]
  assert all(len(qs) == text.count("\n") - 1 for text, _, qs in traces)
