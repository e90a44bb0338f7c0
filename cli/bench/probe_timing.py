"""Probe speed for `minrctl bench-speed`: the linear probe and k-NN on synthetic cached features of real sizes."""

from __future__ import annotations

import time

import torch

from probes.knn import knn_predict
from probes.linear import linear_probe


def measure_probes(n_train: int, n_test: int, dim: int = 256) -> dict[str, float]:
    """Linear probe (one seed, its hyper-parameter grid) on n_train cached features; k-NN of n_test x n_train."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (n_train + n_test,), generator=g)
    x = torch.randn(n_train + n_test, dim, generator=g) + torch.nn.functional.one_hot(y, dim).float()
    split = (x[:n_train], y[:n_train])
    t0 = time.perf_counter()
    linear_probe(split, (x[n_train:], y[n_train:]), (x[n_train:], y[n_train:]), 10, epochs=20)
    t1 = time.perf_counter()
    knn_predict(x[:n_train], y[:n_train], x[n_train:], num_classes=10)
    t2 = time.perf_counter()
    return {"train_features": n_train, "test_features": n_test, "dim": dim, "linear_probe_s": t1 - t0, "knn_s": t2 - t1}
