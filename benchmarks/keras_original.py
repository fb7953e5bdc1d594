"""The original Keras experiment (TensorFlow CPU): the seed CNN trained once per initializer on MNIST,
5 epochs, Adam, batch 64, test accuracy after every epoch; no diagnostics. Reads the IDX files from disk.

Run with a Python that has TensorFlow (see vs_keras.py for the setup):
    TF_VENV/bin/python benchmarks/keras_original.py --data-dir MNIST_DIR
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np


def read_idx(directory: Path, name: str) -> np.ndarray:
    for candidate in (directory / name, directory / "MNIST" / "raw" / name):
        for path in (candidate, candidate.with_name(candidate.name + ".gz")):
            if path.exists():
                raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
                dims = raw[3]
                shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
                return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)
    raise SystemExit(f"{name} not found under {directory}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    from tensorflow import keras  # imported here so --help works without TensorFlow

    x_train = read_idx(args.data_dir, "train-images-idx3-ubyte").astype("float32")[..., None] / 255.0
    y_train = read_idx(args.data_dir, "train-labels-idx1-ubyte").astype("int64")
    x_test = read_idx(args.data_dir, "t10k-images-idx3-ubyte").astype("float32")[..., None] / 255.0
    y_test = read_idx(args.data_dir, "t10k-labels-idx1-ubyte").astype("int64")
    initializers = {
        "zeros": keras.initializers.Zeros(),
        "random": keras.initializers.RandomNormal(mean=0.0, stddev=0.1),
        "xavier": keras.initializers.GlorotNormal(),
        "he": keras.initializers.HeNormal(),
    }
    start = time.perf_counter()
    for name, init in initializers.items():
        model = keras.Sequential([
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(32, 3, activation="relu", kernel_initializer=init),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(64, 3, activation="relu", kernel_initializer=init),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(64, 3, activation="relu", kernel_initializer=init),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu", kernel_initializer=init),
            keras.layers.Dense(10, activation="softmax", kernel_initializer=init),
        ])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        history = model.fit(x_train, y_train, batch_size=64, epochs=args.epochs,
                            validation_data=(x_test, y_test), verbose=0)
        print(f"{name}: test accuracy {history.history['val_accuracy'][-1]:.4f}", flush=True)
    print(f"keras: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
