"""The example model's world: synthetic users, the known rule that labels them, and a small MLP trained in numpy.

Used by ``build.py``; kept apart so the build script is only about exporting, quantising, measuring and packaging.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Feature:
    """One model input: its feature ref, the value used when it is missing, and a one-line description."""

    ref: str
    default: float
    description: str


FEATURES: tuple[Feature, ...] = (
    Feature("user_data:click_through_rate", 0.0625, "share of impressions the user clicked (0-1)"),
    Feature("user_data:number_of_clicks", 0.0, "clicks in the last 30 days"),
    Feature("user_data:average_page_duration", 45.0, "mean seconds per page view"),
    Feature("user_data:days_since_signup", 0.0, "account age in days"),
    Feature("user_data:sessions_last_7d", 0.0, "sessions in the last 7 days"),
    Feature("user_data:is_premium", 0.0, "1 for a premium account, else 0"),
    Feature("user_data:avg_order_value", 35.0, "mean order value in EUR"),
    Feature("user_stream:orders_last_10m", 0.0, "orders in the last 10 minutes (streaming aggregate)"),
)
NAMES = [f.ref.split(":", 1)[1] for f in FEATURES]


# --- data ----------------------------------------------------------------------------------------------------------


def draw_users(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` synthetic users as an ``(n, 8)`` float64 matrix in feature order, raw units."""
    ctr = rng.beta(2.0, 30.0, n)
    clicks = rng.poisson(np.exp(rng.normal(2.5, 0.8, n))).astype(np.float64)
    duration = np.exp(rng.normal(np.log(45.0), 0.6, n))
    days = np.floor(rng.uniform(0, 1500, n))
    sessions = rng.poisson(np.exp(rng.normal(1.2, 0.7, n))).astype(np.float64)
    premium = (rng.random(n) < 0.2).astype(np.float64)
    order_value = np.exp(rng.normal(np.log(35.0), 0.5, n))
    orders_10m = rng.poisson(0.3 + 0.5 * premium).astype(np.float64)
    return np.column_stack([ctr, clicks, duration, days, sessions, premium, order_value, orders_10m])


def true_logit(x: np.ndarray) -> np.ndarray:
    """The known rule: log-odds that a user clicks, before noise. Non-linear on purpose (log, tanh, an
    interaction, a saturating count) so the MLP has something to learn beyond a linear model."""
    ctr, clicks, duration, days, sessions, premium, order_value, orders_10m = x.T
    return (
        -1.2
        + 1.3 * (ctr - 0.06) / 0.04
        + 0.6 * (np.log1p(clicks) - 2.5)
        + 0.8 * np.tanh((np.log(duration) - np.log(45.0)) / 0.6)
        - 0.4 * days / 1500.0
        + 0.35 * np.log1p(sessions)
        + 0.7 * premium
        + 0.5 * premium * (np.log(order_value) - np.log(35.0)) / 0.5
        + 0.9 * np.minimum(orders_10m, 3.0) / 3.0
    )


def label(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """0/1 labels: Bernoulli(sigmoid(true_logit + N(0, 0.5)))."""
    z = true_logit(x) + rng.normal(0.0, 0.5, x.shape[0])
    return (rng.random(x.shape[0]) < _sigmoid(z)).astype(np.int8)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


# --- training --------------------------------------------------------------------------------------------------


def train_mlp(
    x: np.ndarray,
    y: np.ndarray,
    hidden: tuple[int, ...],
    *,
    epochs: int,
    lr: float,
    seed: int,
    batch: int = 256,
    log: Callable[[str], None] = print,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Train a ReLU MLP with a sigmoid output on binary cross-entropy with Adam; return ``[(W, b), ...]``."""
    rng = np.random.default_rng(seed)
    sizes = [x.shape[1], *hidden, 1]
    params: list[np.ndarray] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        params.append((rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32))
        params.append(np.zeros(fan_out, dtype=np.float32))
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    x32 = x.astype(np.float32)
    y32 = y.astype(np.float32).reshape(-1, 1)
    step = 0
    layers = len(sizes) - 1
    for epoch in range(epochs):
        order = rng.permutation(x.shape[0])
        for start in range(0, x.shape[0], batch):
            idx = order[start : start + batch]
            acts = [x32[idx]]
            for i in range(layers):
                z = acts[-1] @ params[2 * i] + params[2 * i + 1]
                acts.append(np.maximum(z, 0.0) if i < layers - 1 else z)
            # d(BCE with logits)/d(logit) = sigmoid(logit) - y
            grad = (_sigmoid(acts[-1]) - y32[idx]) / len(idx)
            grads: list[np.ndarray] = [np.empty(0)] * len(params)
            for i in reversed(range(layers)):
                grads[2 * i] = acts[i].T @ grad
                grads[2 * i + 1] = grad.sum(axis=0)
                if i > 0:
                    grad = (grad @ params[2 * i].T) * (acts[i] > 0)
            step += 1
            rate = lr * np.sqrt(1 - beta2**step) / (1 - beta1**step)
            for p, g, mi, vi in zip(params, grads, m, v, strict=True):
                mi *= beta1
                mi += (1 - beta1) * g
                vi *= beta2
                vi += (1 - beta2) * g * g
                p -= (rate * mi / (np.sqrt(vi) + eps)).astype(np.float32)
        if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            log(f"  epoch {epoch + 1}/{epochs}")
    return [(params[2 * i], params[2 * i + 1]) for i in range(layers)]


def mlp_forward(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    """Reference forward pass in float64 (used to check every export)."""
    h = x.astype(np.float64)
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return _sigmoid(h)


# --- export ----------------------------------------------------------------------------------------------------
