"""Train a 1-D CNN on MNIST-1D with jaxconv's hand-derived gradients.

The data set is generated offline by the ``mnist1d`` package from its ten
templates, with the package's default arguments (5000 sequences of length 40,
split 4000 train / 1000 test, seed 42); nothing is downloaded. The network is
``jaxconv.models.mnist1d_cnn``: three (conv -> relu -> max pool) blocks, then
two dense layers and the softmax cross-entropy. Training batches are shifted
at random by up to ``--shift`` samples (the data set's own variation is a
translation; this is what takes the network from about 94-96% to 97-98%).

  python experiments/train_mnist1d.py               # custom and autodiff
  python experiments/train_mnist1d.py --no-compare  # custom gradients only
  python experiments/train_mnist1d.py --no-compare --grad autodiff
  python experiments/train_mnist1d.py --quick       # seconds

The first lines say what is being done before training starts (generating
the data, compiling); with --compare the last lines separate the per-step
gradient check from the drift between the two runs (docs/experiments.md).

See docs/experiments.md for the measured results.
"""

from __future__ import annotations

import argparse

import numpy as np
from mnist1d.data import get_dataset_args, make_dataset

from jaxconv import models

import training


def load() -> dict:
  """MNIST-1D with the package's default arguments: 4000 train, 1000 test."""
  # make_dataset builds the sequences from templates; the package's
  # get_dataset would download a pickle instead.
  data = make_dataset(get_dataset_args())
  return {"x_train": data["x"].astype(np.float32),
          "y_train": data["y"].astype(np.int32),
          "x_test": data["x_test"].astype(np.float32),
          "y_test": data["y_test"].astype(np.int32)}


def random_shift(max_shift: int):
  """Augmentation: shift each sequence by up to ``max_shift`` samples either
  way, repeating the edge value into the vacated end."""
  def augment(x, rng):
    shifts = rng.integers(-max_shift, max_shift + 1, size=len(x))
    positions = np.arange(x.shape[1])[None, :] - shifts[:, None]
    positions = np.clip(positions, 0, x.shape[1] - 1)
    return np.take_along_axis(x, positions, axis=1)
  return augment


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(
      prog="train_mnist1d.py", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  training.add_arguments(parser, epochs=100, batch_size=100,
                         learning_rate=1e-2, weight_decay=1e-4,
                         quick_epochs=2, compare_default=True)
  parser.add_argument("--shift", type=int, default=6,
                      help="augment: shift training sequences by up to this "
                      "many samples (default 6; 0 turns it off)")
  args = training.parse(parser, argv)
  augment = random_shift(args.shift) if args.shift > 0 else None
  print("mnist1d: generating the data set (5000 sequences from the mnist1d "
        "templates)...", flush=True)
  data = load()
  results = training.train("mnist1d", models.MODELS["mnist1d_cnn"], data,
                           args, augment=augment)
  print(f"test accuracy: {results['test_accuracy']:.3f}")
  return results


if __name__ == "__main__":
  main()
