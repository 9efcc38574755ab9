"""The task both systems run: digits (scikit-learn's copy, 75/25 stratified split, seed 0),
an MLP 64-64-10 in NumPy, plain SGD (lr 0.1, batch 16, 5 local epochs), each client an IID
part of the training split (as `sov fl join --data digits:I/N`)."""

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

LR, BATCH, EPOCHS, HIDDEN = 0.1, 16, 5, 64


def split():
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)


def part(i, n):
    x_tr, _, y_tr, _ = split()
    order = np.random.default_rng(0).permutation(len(y_tr))
    idx = np.array_split(order, n)[i]
    return x_tr[idx], y_tr[idx]


def init():
    rng = np.random.default_rng(42)
    return [
        rng.normal(0, np.sqrt(2 / 64), (64, HIDDEN)).astype(np.float32),
        np.zeros(HIDDEN, np.float32),
        rng.normal(0, np.sqrt(2 / HIDDEN), (HIDDEN, 10)).astype(np.float32),
        np.zeros(10, np.float32),
    ]


def forward(p, x):
    h = np.maximum(x @ p[0] + p[1], 0)
    z = h @ p[2] + p[3]
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return h, e / e.sum(1, keepdims=True)


def train(p, x, y, seed):
    p = [a.copy() for a in p]
    rng = np.random.default_rng(seed)
    for _ in range(EPOCHS):
        order = rng.permutation(len(y))
        for s in range(0, len(y), BATCH):
            b = order[s:s + BATCH]
            h, g = forward(p, x[b])
            g[np.arange(len(b)), y[b]] -= 1
            g /= len(b)
            gh = (g @ p[2].T) * (h > 0)
            p = [p[0] - LR * x[b].T @ gh, p[1] - LR * gh.sum(0),
                 p[2] - LR * h.T @ g, p[3] - LR * g.sum(0)]
    return [a.astype(np.float32) for a in p]


def accuracy(p):
    _, x_te, _, y_te = split()
    return float((forward(p, x_te)[1].argmax(1) == y_te).mean())
