"""The run's plots: a length curriculum's many lengths are drawn as a readable grid."""

import numpy as np
from PIL import Image

from star_jax.experiment import plots


def _metrics(lengths: int, iterations: int = 3) -> list[dict]:
  return [{"iteration": i, "eval_accuracy": 0.5,
           "accuracy_by_digits": {str(d): (d <= 4 + 2 * i) * 1.0 for d in range(1, lengths + 1)}}
          for i in range(iterations)]


def test_many_lengths_are_a_grid_of_iterations_by_lengths(tmp_path):
  few, many = tmp_path / "few.png", tmp_path / "many.png"
  plots.plot_by_difficulty(_metrics(5), "accuracy_by_digits", few, "t", "{} digits")
  plots.plot_by_difficulty(_metrics(22), "accuracy_by_digits", many, "t", "{} digits")
  few_img, many_img = Image.open(few), Image.open(many)
  assert few_img.size == (660, 440)  # the line plot: 6 x 4 inches at 110 dpi
  assert many_img.size == (int(110 * (0.42 * 22 + 1.5)), int(110 * 2.5))  # a column a length
  # Right cells are viridis' yellow, wrong ones its purple: the grid, not lines on white.
  rgb = np.asarray(many_img.convert("RGB")).reshape(-1, 3).astype(int)
  yellow = (rgb[:, 0] > 200) & (rgb[:, 1] > 200) & (rgb[:, 2] < 80)
  purple = (rgb[:, 0] < 90) & (rgb[:, 1] < 30) & (rgb[:, 2] > 60)
  assert yellow.mean() > 0.1 and purple.mean() > 0.1
  few_rgb = np.asarray(few_img.convert("RGB")).reshape(-1, 3).astype(int)
  assert ((few_rgb[:, 0] > 200) & (few_rgb[:, 1] > 200) & (few_rgb[:, 2] < 80)).mean() < 0.01
