"""Train a LeNet-style 2-D CNN on scikit-learn's 8 x 8 digits with jaxconv.

The 1797 images of ``sklearn.datasets.load_digits`` (shipped with
scikit-learn, nothing is downloaded) are scaled to [0, 1] and split 75/25,
stratified, with a fixed seed: 1347 train, 450 test. The network is
``jaxconv.models.lenet``: (conv 3x3 -> relu -> max pool 2x2) twice, then two
dense layers and the softmax cross-entropy; every gradient hand-derived.

  python experiments/train_digits.py                  # custom gradients
  python experiments/train_digits.py --grad autodiff  # JAX's autodiff of lax
  python experiments/train_digits.py --compare        # both, side by side
  python experiments/train_digits.py --quick          # seconds

See docs/experiments.md for the measured results.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from jaxconv import models

import training


def load() -> dict:
  """The digits as ``(n, 8, 8, 1)`` images in [0, 1]: 1347 train, 450 test."""
  digits = load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]
  x_train, x_test, y_train, y_test = train_test_split(
      images, digits.target.astype(np.int32), test_size=0.25,
      stratify=digits.target, random_state=0)
  return {"x_train": x_train, "y_train": y_train,
          "x_test": x_test, "y_test": y_test}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(
      prog="train_digits.py", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  training.add_arguments(parser, epochs=40, batch_size=32,
                         learning_rate=3e-3, weight_decay=1e-4,
                         quick_epochs=2)
  args = training.parse(parser, argv)
  print("digits: loading scikit-learn's 8x8 digits...", flush=True)
  results = training.train("digits", models.MODELS["lenet"], load(), args)
  print(f"test accuracy: {results['test_accuracy']:.3f}")
  return results


if __name__ == "__main__":
  main()
