"""Train a 1-D CNN on MNIST-1D with jaxconv's hand-derived gradients.

The data set is generated offline by the ``mnist1d`` package from its ten
templates, with the package's default arguments (5000 sequences of length 40,
split 4000 train / 1000 test, seed 42); nothing is downloaded. The network is
``jaxconv.models.mnist1d_cnn``: three (conv -> relu -> max pool) blocks, then
two dense layers and the softmax cross-entropy.

  python experiments/train_mnist1d.py                  # custom gradients
  python experiments/train_mnist1d.py --grad autodiff  # JAX's autodiff of lax
  python experiments/train_mnist1d.py --compare        # both, side by side
  python experiments/train_mnist1d.py --quick          # seconds

See docs/experiments.md for the measured results.
"""

from __future__ import annotations

import argparse

import numpy as np
from mnist1d.data import get_dataset_args, make_dataset

import training
from jaxconv import models


def load() -> dict:
  """MNIST-1D with the package's default arguments: 4000 train, 1000 test."""
  # make_dataset builds the sequences from templates; the package's
  # get_dataset would download a pickle instead.
  data = make_dataset(get_dataset_args())
  return {"x_train": data["x"].astype(np.float32),
          "y_train": data["y"].astype(np.int32),
          "x_test": data["x_test"].astype(np.float32),
          "y_test": data["y_test"].astype(np.int32)}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  training.add_arguments(parser, epochs=60, batch_size=100,
                         learning_rate=3e-3, weight_decay=1e-4,
                         quick_epochs=2)
  args = training.parse(parser, argv)
  results = training.train("mnist1d", models.MODELS["mnist1d_cnn"], load(),
                           args)
  print(f"test accuracy: {results['test_accuracy']:.3f}")
  return results


if __name__ == "__main__":
  main()
