"""The task-partition artifact: a versioned JSON file plus a safetensors file of its arrays.

``tasks.json`` (human-readable: what was fit, on what, with which seed and split, and what each
cluster looks like) and ``tasks.safetensors`` next to it (classifier arrays, float64). The JSON
records the arrays file's SHA-256, so a mismatched pair fails at load, as does an unknown schema.

Boundary: (de)serialization and validation only; fitting is ``fit.py``, classifying
``classifier.py``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .classifier import TaskClassifier

SCHEMA_VERSION = 1
KIND = "specrouter.tasks"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def arrays_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".safetensors")


@dataclass
class TaskArtifact:
    classifier: TaskClassifier
    embed: dict  # model (loaded name), spec (as given), dtype, dim, pool_from, max_tokens
    prompts: dict  # path, sha256, count
    split: dict  # seed, holdout, train: [qid], heldout: [qid]
    fit: dict  # k_range, k, silhouette {k: score}, n_init, radius_quantile, radius_slack
    clusters: list[dict]  # id, size, top_terms, examples, categories {cat: n}, majority_category
    assignments: dict[str, dict]  # qid -> category, split, cluster (None: fallback), nearest, confidence
    category_names: list[str] = field(default_factory=list)
    category_centroids: np.ndarray | None = None  # [C, D] in feature space: a supervised reference
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    @property
    def k(self) -> int:
        return self.classifier.k

    def cluster_category(self, label: int | None) -> str | None:
        return None if label is None else self.clusters[label]["majority_category"]

    def qids(self, split: str) -> list[str]:
        if split == "all":
            return self.split["train"] + self.split["heldout"]
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be train, heldout or all, got {split!r}")
        return list(self.split[split])

    # ------------------------------------------------------------------ disk
    def save(self, path: str | Path) -> Path:
        from safetensors.numpy import save_file

        path = Path(path)
        if path.suffix != ".json":
            raise ValueError(f"artifact path must end in .json (the arrays go next to it), got {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"classifier.{k}": np.ascontiguousarray(v) for k, v in self.classifier.arrays().items()}
        if self.category_centroids is not None:
            arrays["category_centroids"] = np.ascontiguousarray(self.category_centroids)
        save_file(arrays, str(arrays_path(path)))
        doc = {"kind": KIND, "schema": SCHEMA_VERSION, "created": self.created,
               "arrays": {"file": arrays_path(path).name, "sha256": sha256_file(arrays_path(path))},
               "embed": self.embed, "prompts": self.prompts, "split": self.split, "fit": self.fit,
               "clusters": self.clusters, "category_names": self.category_names, "assignments": self.assignments}
        path.write_text(json.dumps(doc, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TaskArtifact":
        from safetensors.numpy import load_file

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"task artifact {path} does not exist (make one with `specrouter tasks fit`)")
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not a task artifact: {e}") from None
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            kind = doc.get("kind") if isinstance(doc, dict) else None
            raise ValueError(f"{path} is not a task artifact (kind {kind!r})")
        if doc.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"{path} has task-artifact schema {doc.get('schema')!r}; this version of specrouter "
                             f"reads schema {SCHEMA_VERSION} (refit with `specrouter tasks fit`)")
        apath = path.parent / doc["arrays"]["file"]
        if not apath.exists():
            raise FileNotFoundError(f"{apath} (the arrays of {path}) is missing")
        if sha256_file(apath) != doc["arrays"]["sha256"]:
            raise ValueError(f"{apath} does not match {path} (SHA-256 differs): the pair was mixed up")
        arrays = load_file(str(apath))
        clf = TaskClassifier.from_arrays({k.removeprefix("classifier."): v for k, v in arrays.items()
                                          if k.startswith("classifier.")})
        return cls(clf, doc["embed"], doc["prompts"], doc["split"], doc["fit"], doc["clusters"],
                   doc["assignments"], doc.get("category_names", []), arrays.get("category_centroids"),
                   doc["created"])
