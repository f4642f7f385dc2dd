"""k-means with k-means++ seeding, the silhouette score, and the choice of k by silhouette.

Pure functions on a float64 NumPy matrix ``X`` [N, D] (rows are points); no models, no text.
Everything random takes an explicit seed, so a fit is reproducible bit for bit.

Choosing k: for each k in a range, run k-means (best of ``n_init`` seeded restarts by inertia) and
score the partition by its mean silhouette s = (b - a) / max(a, b), where a is a point's mean
distance to its own cluster and b its mean distance to the nearest other cluster. The k with the
highest mean silhouette wins (ties: the smaller k). Silhouette needs 2 <= k <= N - 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class KMeansResult:
    centroids: np.ndarray  # [k, D]
    labels: np.ndarray  # [N] int64
    inertia: float  # sum of squared distances to the assigned centroid


def sq_distances(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances [N, k] between rows of X and rows of C (clamped at 0)."""
    d = (X * X).sum(1)[:, None] - 2 * X @ C.T + (C * C).sum(1)[None, :]
    return np.maximum(d, 0.0)


def kmeans_pp_init(X: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ (Arthur & Vassilvitskii 2007): each next centre drawn with probability ~ D(x)^2."""
    n = len(X)
    centres = [X[rng.integers(n)]]
    d2 = sq_distances(X, centres[0][None])[:, 0]
    for _ in range(1, k):
        total = d2.sum()
        # all points coincide with a centre already: any point will do
        idx = rng.integers(n) if total <= 0 else rng.choice(n, p=d2 / total)
        centres.append(X[idx])
        d2 = np.minimum(d2, sq_distances(X, X[idx][None])[:, 0])
    return np.stack(centres)


def kmeans(X: np.ndarray, k: int, seed: int = 0, n_init: int = 8, max_iter: int = 100,
           tol: float = 1e-7) -> KMeansResult:
    """Lloyd's algorithm from ``n_init`` k-means++ starts; returns the lowest-inertia run.

    An empty cluster is re-seeded with the point farthest from its centre (so k clusters stay k).
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or len(X) == 0:
        raise ValueError(f"kmeans needs a non-empty [N, D] matrix, got shape {X.shape}")
    if not 1 <= k <= len(X):
        raise ValueError(f"k must be in [1, {len(X)}] for {len(X)} points, got {k}")
    best = None
    for run in range(n_init):
        rng = np.random.default_rng([seed, run])
        C = kmeans_pp_init(X, k, rng)
        prev = np.inf
        for _ in range(max_iter):
            d = sq_distances(X, C)
            labels = d.argmin(1)
            inertia = float(d[np.arange(len(X)), labels].sum())
            for j in range(k):
                members = labels == j
                if members.any():
                    C[j] = X[members].mean(0)
                else:
                    far = int(d[np.arange(len(X)), labels].argmax())
                    C[j] = X[far]
                    labels[far] = j
            if prev - inertia <= tol * max(prev, 1e-12):
                break
            prev = inertia
        d = sq_distances(X, C)
        labels = d.argmin(1)
        inertia = float(d[np.arange(len(X)), labels].sum())
        if best is None or inertia < best.inertia:
            best = KMeansResult(C.copy(), labels.astype(np.int64), inertia)
    return best


def silhouette(X: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette coefficient (Euclidean). Points alone in their cluster score 0."""
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels)
    ks = np.unique(labels)
    if not 2 <= len(ks) <= len(X) - 1:
        raise ValueError(f"silhouette needs 2 <= clusters <= N - 1, got {len(ks)} clusters for {len(X)} points")
    D = np.sqrt(sq_distances(X, X))
    # mean distance of every point to every cluster: [N, k]
    onehot = (labels[:, None] == ks[None, :]).astype(np.float64)
    sizes = onehot.sum(0)
    sums = D @ onehot
    own = np.searchsorted(ks, labels)
    n_own = sizes[own]
    a = np.where(n_own > 1, sums[np.arange(len(X)), own] / np.maximum(n_own - 1, 1), 0.0)
    other = sums / sizes[None, :]
    other[np.arange(len(X)), own] = np.inf
    b = other.min(1)
    s = np.where(n_own > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


def choose_k(X: np.ndarray, k_range: tuple[int, int], seed: int = 0, n_init: int = 8,
             progress=None) -> tuple[int, dict[int, float], dict[int, KMeansResult]]:
    """Best k in [k_range[0], k_range[1]] by mean silhouette. Returns (k, {k: score}, {k: result}).

    ``progress(k, score)`` is called after each k when given.
    """
    lo, hi = k_range
    hi = min(hi, len(X) - 1)
    if lo < 2 or hi < lo:
        raise ValueError(f"k range {k_range} is empty for {len(X)} points (need 2 <= lo <= hi <= N - 1)")
    scores, results = {}, {}
    for k in range(lo, hi + 1):
        res = kmeans(X, k, seed=seed, n_init=n_init)
        results[k] = res
        scores[k] = silhouette(X, res.labels) if len(np.unique(res.labels)) >= 2 else -1.0
        if progress is not None:
            progress(k, scores[k])
    best = max(scores, key=lambda k: (scores[k], -k))
    return best, scores, results
