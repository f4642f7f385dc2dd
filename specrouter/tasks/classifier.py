"""The online task classifier: nearest centroid on standardized, unit-normalized prompt embeddings.

Boundary: an embedding vector in, (task label or None, confidence, distance) out, in tens of
microseconds of NumPy. Building the centroids (k-means) is ``fit.py``'s job; embeddings come from
``embed.py``.

Feature map: f(e) = u / |u| with u = (e - mean) / scale (per-dimension statistics of the training
embeddings): standardizing stops a few huge hidden-state dimensions from dominating, and the unit
norm makes Euclidean distance a monotone function of cosine similarity.

Decision: the nearest centroid c. ``confidence`` is the soft assignment softmax(-d^2 / sigma2) at c,
with sigma2 the training points' mean squared distance to their own centroid. A prompt farther from
c than ``radius[c]`` (slack x the q-quantile of training distances, cluster's or the whole data's,
whichever is larger) is "far from every cluster": label None, the general draft serves it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Assignment:
    label: int | None  # None: far from every cluster (fallback to the general draft)
    nearest: int  # the nearest centroid, even when it is too far
    confidence: float
    distance: float


def standardizer(E: np.ndarray, floor: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and scale (std, floored relative to the median std)."""
    mean = E.mean(0)
    std = E.std(0)
    return mean, np.maximum(std, floor * max(float(np.median(std)), 1e-12))


def features(E: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """[N, D] or [D] embeddings -> standardized, unit-norm features of the same shape."""
    u = (np.asarray(E, dtype=np.float64) - mean) / scale
    return u / np.maximum(np.linalg.norm(u, axis=-1, keepdims=True), 1e-12)


class TaskClassifier:
    def __init__(self, mean: np.ndarray, scale: np.ndarray, centroids: np.ndarray, radius: np.ndarray,
                 sigma2: float):
        k, d = centroids.shape
        if mean.shape != (d,) or scale.shape != (d,) or radius.shape != (k,):
            raise ValueError(f"classifier shapes disagree: mean {mean.shape}, scale {scale.shape}, "
                             f"centroids {centroids.shape}, radius {radius.shape}")
        if not sigma2 > 0:
            raise ValueError(f"sigma2 must be positive, got {sigma2}")
        self.mean, self.scale = mean.astype(np.float64), scale.astype(np.float64)
        self.centroids, self.radius, self.sigma2 = centroids.astype(np.float64), radius.astype(np.float64), sigma2
        self._c_sq = (self.centroids ** 2).sum(1)

    @property
    def k(self) -> int:
        return len(self.centroids)

    @property
    def dim(self) -> int:
        return self.centroids.shape[1]

    @classmethod
    def from_clusters(cls, mean: np.ndarray, scale: np.ndarray, X: np.ndarray, centroids: np.ndarray,
                      labels: np.ndarray, quantile: float = 0.95, slack: float = 1.25) -> "TaskClassifier":
        """X: training features (``features``), labels: their clusters, centroids: [k, D] in feature space."""
        if not 0 < quantile <= 1 or slack <= 0:
            raise ValueError(f"need 0 < quantile <= 1 and slack > 0, got {quantile}, {slack}")
        d = np.linalg.norm(X - centroids[labels], axis=1)
        overall = float(np.quantile(d, quantile))
        radius = np.array([slack * max(float(np.quantile(d[labels == j], quantile)) if (labels == j).any() else 0.0,
                                       overall) for j in range(len(centroids))])
        sigma2 = float((d ** 2).mean()) or 1e-6
        return cls(mean, scale, centroids, radius, sigma2)

    def distances(self, F: np.ndarray) -> np.ndarray:
        """Features [N, D] -> Euclidean distances to every centroid [N, k]."""
        d2 = (F * F).sum(1)[:, None] - 2 * F @ self.centroids.T + self._c_sq[None, :]
        return np.sqrt(np.maximum(d2, 0.0))

    def classify_many(self, E: np.ndarray) -> list[Assignment]:
        F = features(np.atleast_2d(E), self.mean, self.scale)
        D = self.distances(F)
        logits = -(D ** 2) / self.sigma2
        post = np.exp(logits - logits.max(1, keepdims=True))
        post /= post.sum(1, keepdims=True)
        out = []
        for i, j in enumerate(D.argmin(1)):
            far = D[i, j] > self.radius[j]
            out.append(Assignment(None if far else int(j), int(j), float(post[i, j]), float(D[i, j])))
        return out

    def classify(self, e: np.ndarray) -> Assignment:
        if e.shape != (self.dim,):
            raise ValueError(f"embedding of shape {e.shape}; the classifier expects ({self.dim},)")
        return self.classify_many(e[None])[0]

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "scale": self.scale, "centroids": self.centroids, "radius": self.radius,
                "sigma2": np.array([self.sigma2])}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> "TaskClassifier":
        return cls(a["mean"], a["scale"], a["centroids"], a["radius"], float(a["sigma2"][0]))
