"""(line, column) positions: counting, restarts, and the same positions in training and decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from star_jax import tasks
from star_jax.engine import params as params_lib
from star_jax.engine.model_config import get_preset
from star_jax.engine.positions import segment_starts
from star_jax.engine.trainer import loss_sums
from star_jax.tasks import line_positions as positions
from star_jax.tasks.line_positions import LineColumnPositions
from star_jax.tokenizer import CharTokenizer

BREAK = 9


def test_lines_and_columns_restart_at_breaks_and_starts():
  # Row 0 is a left-padded prompt starting at index 2; row 1 packs two segments.
  tokens = jnp.asarray([[0, 0, 5, 6, BREAK, 7, BREAK, BREAK, 8],
                        [5, BREAK, 6, 6, BREAK, 5, 5, BREAK, 1]])
  starts = jnp.asarray([[0, 0, 1, 0, 0, 0, 0, 0, 0],
                        [1, 0, 0, 0, 0, 1, 0, 0, 0]])
  got = np.asarray(positions.line_column(tokens, starts, [BREAK]))
  # A break opens the next line at column 0; content follows at columns 1, 2, ...
  np.testing.assert_array_equal(got[0, 2:, 0], [0, 0, 1, 1, 2, 3, 3])  # lines
  np.testing.assert_array_equal(got[0, 2:, 1], [1, 2, 0, 1, 0, 0, 1])  # columns
  np.testing.assert_array_equal(got[1, :, 0], [0, 1, 1, 1, 2, 0, 0, 1, 1])
  np.testing.assert_array_equal(got[1, :, 1], [1, 0, 1, 2, 0, 1, 2, 0, 1])


def test_advance_matches_recounting():
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 12, (3, 20))
  full = np.asarray(positions.line_column(jnp.asarray(tokens), jnp.zeros((3, 20)).at[:, 0].set(1),
                                          [BREAK, 10]))
  pos = jnp.asarray(full[:, 0])
  for t in range(1, 20):
    pos = positions.advance(pos, jnp.asarray(tokens[:, t]), [BREAK, 10])
    np.testing.assert_array_equal(np.asarray(pos), full[:, t])


def test_segment_starts():
  seg = jnp.asarray([[1, 1, 2, 2, 2, 0, 0]])
  np.testing.assert_array_equal(np.asarray(segment_starts(seg))[0],
                                [1, 0, 1, 0, 0, 1, 0])


def test_packed_training_loss_equals_each_segment_alone(mesh1):
  """The trainer restarts (line, column) per packed segment: packing changes nothing."""
  cfg = get_preset("tiny", positions=LineColumnPositions((BREAK,)))
  graphdef, params = params_lib.init_params(cfg, mesh1, seed=0)
  a, b = [5, BREAK, 6, 7, BREAK, 8], [4, 4, BREAK, 3, 2]

  def batch(segs):
    toks = sum(segs, [])
    seg_ids = sum([[i + 1] * len(s) for i, s in enumerate(segs)], [])
    L = len(toks)
    return {"tokens": jnp.asarray([toks]), "targets": jnp.asarray([toks[1:] + [0]]),
            "loss_mask": jnp.asarray([[1.0] * L]), "segment_ids": jnp.asarray([seg_ids]),
            "positions": jnp.zeros((1, L), jnp.int32)}  # ignored: computed from the tokens

  model = params_lib.merge(graphdef, params)
  alone = loss_sums(model, batch([b]))[0]
  together_b_masked = batch([a, b])
  together_b_masked["loss_mask"] = jnp.asarray([[0.0] * len(a) + [1.0] * len(b)])
  assert float(loss_sums(model, together_b_masked)[0]) == pytest.approx(float(alone), rel=1e-5)


def test_config_checks():
  with pytest.raises(ValueError, match="break_ids"):
    LineColumnPositions(())
  with pytest.raises(ValueError, match="jitter"):
    LineColumnPositions((1,), jitter=-1)
  with pytest.raises(ValueError, match="multiple of 4"):
    LineColumnPositions((1,)).rotary_angles(jnp.zeros((1, 2, 3)), rope_dim=6, base=100.0)
  with pytest.raises(ValueError, match="needs right_aligned"):
    LineColumnPositions((1,), both_columns=True)
  with pytest.raises(ValueError, match="positions must be"):
    tasks.get_task("arithmetic", positions="grid")


def test_arithmetic_task_offers_the_scheme_on_its_tokenizer():
  tok = CharTokenizer.from_texts(["Input:\n1 + 2\nTarget:\n"])
  assert tasks.get_task("arithmetic").positions(tok) is None
  scheme = tasks.get_task("arithmetic", positions="line_column", right_aligned_columns=True,
                          position_jitter=2).positions(tok)
  assert scheme == LineColumnPositions(tok.encode("\n"), right_aligned=True, jitter=2)
  assert hash(scheme) == hash(LineColumnPositions(tok.encode("\n"), True, 2))  # a compile key


def test_right_aligned_columns_line_up_line_ends():
  # Lines of 4, 3 and 2 tokens after their breaks: each ends one column left of the one above.
  tokens = jnp.asarray([[5, 6, 7, BREAK, 5, 6, 7, BREAK, 5, 6, BREAK, 5]])
  starts = jnp.zeros((1, 12)).at[:, 0].set(1)
  got = np.asarray(positions.line_column(tokens, starts, [BREAK], right_aligned=True))
  np.testing.assert_array_equal(got[0, :, 2], [1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 0, 1])  # index
  # First line: columns are indices. Later lines: index minus the last index of the line above.
  np.testing.assert_array_equal(got[0, :, 1], [1, 2, 3, -3, -2, -1, 0, -3, -2, -1, -2, -1])
  rng = np.random.default_rng(1)
  toks = rng.integers(0, 12, (3, 24))
  full = np.asarray(positions.line_column(jnp.asarray(toks), jnp.zeros((3, 24)).at[:, 0].set(1),
                                          [BREAK, 10], right_aligned=True))
  pos = jnp.asarray(full[:, 0])
  for t in range(1, 24):  # decoding one token at a time counts the same
    pos = positions.advance(pos, jnp.asarray(toks[:, t]), [BREAK, 10], right_aligned=True)
    np.testing.assert_array_equal(np.asarray(pos), full[:, t])


def test_jitter_keeps_lines_and_columns_aligned():
  tokens = jnp.asarray([[5, 6, 7, BREAK, 5, 6, 7, BREAK, 5, 6, 7, 8]] * 4)
  starts = jnp.zeros((4, 12)).at[:, 0].set(1)
  exact = np.asarray(positions.line_column(tokens, starts, [BREAK]))
  got = np.asarray(positions.jitter(jnp.asarray(exact), 2, jax.random.key(0)))
  for row in got:
    for axis in (0, 1):  # equal coordinates stay equal, neighbours are 2 or 3 apart
      for c in np.unique(exact[0, :, axis]):
        assert len(set(row[exact[0, :, axis] == c, axis])) == 1
      steps = np.diff(np.unique(row[:, axis]))
      assert set(steps.tolist()) <= {2.0, 3.0}
  assert len({tuple(r[:, 1]) for r in got}) > 1  # each row draws its own gaps
  mean = np.asarray(positions.jitter(jnp.asarray(exact), 2))  # sampling: the mean gap
  np.testing.assert_allclose(mean[..., :2], exact[..., :2] * 2.5)


def test_both_columns_add_the_column_from_the_lines_start():
  """A fourth coordinate, the index in the line spaced like the columns: decoding one token at
  a time gives the prefill's positions, and the rotary angles turn a third of the pairs with
  it (next to the right-aligned column and the line)."""
  scheme = LineColumnPositions((BREAK, 10), right_aligned=True, jitter=2, both_columns=True)
  assert scheme.coords == 4
  rng = np.random.default_rng(2)
  toks = jnp.asarray(rng.integers(0, 12, (3, 24)))
  starts = jnp.zeros((3, 24)).at[:, 0].set(1)
  full = np.asarray(scheme.of_tokens(toks, starts))
  three = np.asarray(positions.line_column(toks, starts, [BREAK, 10], right_aligned=True))
  np.testing.assert_allclose(full[..., :2], three[..., :2] * 2.5)
  np.testing.assert_array_equal(full[..., 2], three[..., 2])  # the bookkeeping index stays
  np.testing.assert_allclose(full[..., 3], three[..., 2] * 2.5)
  pos = jnp.asarray(full[:, 0])
  for t in range(1, 24):
    pos = scheme.advance(pos, toks[:, t])
    np.testing.assert_allclose(np.asarray(pos), full[:, t])
  trained = np.asarray(scheme.of_tokens(toks, starts, jax.random.key(3)))
  for row, exact in zip(trained, three):  # jittered: equal start columns stay equal
    for c in np.unique(exact[:, 2]):
      assert len(set(row[exact[:, 2] == c, 3])) == 1
  one = jnp.zeros((1, 1, 4))
  for coord in range(4):
    angles = np.asarray(scheme.rotary_angles(one.at[..., coord].set(1.0), 16, 100.0))[0, 0]
    turning = np.nonzero(angles)[0].tolist()
    assert turning == {1: [0, 1], 3: [2, 3], 0: [4, 5, 6, 7], 2: []}[coord]
