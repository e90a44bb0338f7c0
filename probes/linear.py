"""Linear probe on cached features: per-dimension standardisation (what MAE's affine-free BatchNorm converges
to) and a linear head, with learning rate and weight decay chosen on a held-out split, never on test."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

LRS = (1e-3, 1e-2)
WEIGHT_DECAYS = (0.0, 1e-4)
SKLEARN_CS = (0.1, 1.0, 10.0)
MIN_STEPS = 300


@dataclass
class ProbeResult:
    predictions: np.ndarray  # (N_eval,) predicted class per evaluation image
    accuracy: float
    chosen: dict[str, float]
    selection_accuracy: float
    predict: Callable[[torch.Tensor], np.ndarray]  # the chosen probe, for features extracted later (raw)
    state: dict[str, torch.Tensor] | None = None  # the torch probe: weight, bias and the standardisation


def standardised_head(state: dict[str, torch.Tensor]) -> Callable[[torch.Tensor], np.ndarray]:
    """The chosen torch probe from its state: raw features -> predicted classes."""

    @torch.no_grad()
    def predict_raw(x: torch.Tensor) -> np.ndarray:
        return (
            torch.nn.functional.linear((x.float() - state["mean"]) / state["std"], state["weight"], state["bias"])
            .argmax(1)
            .numpy()
        )

    return predict_raw


def train_linear(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    lr: float,
    weight_decay: float,
    epochs: int,
    seed: int,
    batch_size: int = 1024,
) -> torch.nn.Linear:
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        head.weight.normal_(0, 0.01, generator=g)
        head.bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps = max(epochs * -(-len(x) // batch_size), MIN_STEPS)  # small sets still get enough updates
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    done = 0
    while done < steps:
        for idx in torch.randperm(len(x), generator=g).split(batch_size)[: steps - done]:
            loss = F.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            done += 1
    return head


def _accuracy(pred: np.ndarray, y: torch.Tensor) -> float:
    return float((pred == y.numpy()).mean())


def linear_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    select: tuple[torch.Tensor, torch.Tensor],
    evaluate: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    *,
    seed: int = 0,
    solver: str = "torch",
    epochs: int = 20,
) -> ProbeResult:
    """Fit on `train`, choose hyper-parameters by accuracy on `select`, refit nothing, report on `evaluate` once."""
    (xt, yt), (xs, ys), (xe, ye) = train, select, evaluate
    mean, std = xt.float().mean(0), xt.float().std(0).clamp_min(1e-6)
    xt, xs, xe = ((x.float() - mean) / std for x in (xt, xs, xe))
    best = None
    if solver == "sklearn":
        from sklearn.linear_model import LogisticRegression

        for c in SKLEARN_CS:
            clf = LogisticRegression(C=c, max_iter=300, random_state=seed).fit(xt.numpy(), yt.numpy())
            acc = _accuracy(clf.predict(xs.numpy()), ys)
            if best is None or acc > best[0]:
                best = (acc, {"C": c}, clf.predict)
        acc, chosen, predict = best
        pred = predict(xe.numpy())
        return ProbeResult(
            pred, _accuracy(pred, ye), chosen, acc, lambda x: predict(((x.float() - mean) / std).numpy())
        )
    for lr, wd in itertools.product(LRS, WEIGHT_DECAYS):
        head = train_linear(xt, yt, num_classes, lr=lr, weight_decay=wd, epochs=epochs, seed=seed)
        with torch.no_grad():
            acc = _accuracy(head(xs).argmax(1).numpy(), ys)
        if best is None or acc > best[0]:
            best = (acc, {"lr": lr, "weight_decay": wd}, head)
    acc, chosen, head = best
    state = {"weight": head.weight.detach(), "bias": head.bias.detach(), "mean": mean, "std": std}
    with torch.no_grad():
        pred = head(xe).argmax(1).numpy()
    return ProbeResult(pred, _accuracy(pred, ye), chosen, acc, standardised_head(state), state)
