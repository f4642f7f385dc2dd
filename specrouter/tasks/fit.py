"""Fit and evaluate a task partition of a prompt set (``specrouter tasks fit`` / ``tasks eval``).

fit:  split every category into training and held-out prompts (seeded, recorded), embed the prompts
      (``embed.py``), standardize, choose k by silhouette and run k-means on the training prompts,
      build the nearest-centroid classifier, describe each cluster, classify the held-out prompts,
      and return a ``TaskArtifact``. Categories are never seen by the clustering: they only name
      clusters (each cluster's majority category) and score the result.
eval: re-embed the held-out prompts, timing the embedding forward and the classification
      separately, and score the predicted category (the majority category of the predicted
      cluster; a fallback counts as wrong) against the true one. A supervised reference — nearest
      per-category centroid of the training features — shows how separable the categories are in
      this embedding at all.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from .artifact import TaskArtifact
from .classifier import TaskClassifier, features, standardizer
from .describe import examples, top_terms
from .kmeans import choose_k


@dataclass(frozen=True)
class FitConfig:
    k_range: tuple[int, int] = (2, 12)
    seed: int = 0
    holdout: float = 0.25
    max_tokens: int = 256  # pooled prompt tokens at most (EmbedSpec)
    n_init: int = 8
    radius_quantile: float = 0.95
    radius_slack: float = 1.25
    n_terms: int = 8
    n_examples: int = 3

    def __post_init__(self) -> None:
        lo, hi = self.k_range
        if not 2 <= lo <= hi:
            raise ValueError(f"k range must satisfy 2 <= lo <= hi, got {lo}:{hi}")
        if not 0 < self.holdout < 1:
            raise ValueError(f"holdout must be a fraction in (0, 1), got {self.holdout}")
        if self.max_tokens < 1 or self.n_init < 1:
            raise ValueError("max_tokens and n_init must be >= 1")


def parse_k_range(spec: str) -> tuple[int, int]:
    """'2:12' -> (2, 12); '5' -> (5, 5)."""
    try:
        parts = [int(x) for x in spec.split(":")]
    except ValueError:
        raise ValueError(f"--k-range must be LO:HI or K, got {spec!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise ValueError(f"--k-range must be LO:HI or K, got {spec!r}")
    return parts[0], parts[1]


def split_by_category(qids: list[str], categories: list[str], holdout: float, seed: int) -> dict[str, str]:
    """qid -> 'train' | 'heldout': round(holdout * n) of each category held out (>= 1 of >= 2 prompts)."""
    by_cat: dict[str, list[str]] = defaultdict(list)
    for q, c in zip(qids, categories):
        by_cat[c].append(q)
    if len(set(qids)) != len(qids):
        raise ValueError("question ids are not unique")
    rng = random.Random(seed)
    out = {}
    for cat in sorted(by_cat):
        items = list(by_cat[cat])
        rng.shuffle(items)
        n_hold = min(max(1, round(holdout * len(items))), len(items) - 1) if len(items) >= 2 else 0
        out.update({q: "heldout" for q in items[:n_hold]})
        out.update({q: "train" for q in items[n_hold:]})
    return out


def fit_tasks(prompts: list, ids: list[list[int]], embed_fn, embed_info: dict, prompts_info: dict,
              cfg: FitConfig) -> TaskArtifact:
    """prompts: BenchPrompt-like (qid, category, text); ids: their token ids; embed_fn(list of ids) ->
    ([N, D], seconds) (``PromptEmbedder.many``)."""
    split = split_by_category([p.qid for p in prompts], [p.category for p in prompts], cfg.holdout, cfg.seed)
    tr = [i for i, p in enumerate(prompts) if split[p.qid] == "train"]
    ho = [i for i, p in enumerate(prompts) if split[p.qid] == "heldout"]
    print(f"[tasks] {len(tr)} training / {len(ho)} held-out prompts over "
          f"{len({p.category for p in prompts})} categories (seed {cfg.seed})", file=sys.stderr, flush=True)
    E, _ = embed_fn([ids[i] for i in tr + ho])
    E_tr, E_ho = E[:len(tr)], E[len(tr):]
    mean, scale = standardizer(E_tr)
    X = features(E_tr, mean, scale)
    k, scores, results = choose_k(X, cfg.k_range, seed=cfg.seed, n_init=cfg.n_init,
                                  progress=lambda k, s: print(f"[tasks] k={k}: silhouette {s:.4f}",
                                                              file=sys.stderr, flush=True))
    res = results[k]
    print(f"[tasks] chose k={k} (silhouette {scores[k]:.4f})", file=sys.stderr, flush=True)
    clf = TaskClassifier.from_clusters(mean, scale, X, res.centroids, res.labels, cfg.radius_quantile,
                                       cfg.radius_slack)
    texts = [prompts[i].text for i in tr]
    cats = [prompts[i].category for i in tr]
    terms = top_terms(texts, res.labels, k, cfg.n_terms)
    exs = examples(texts, X, res.labels, res.centroids, cfg.n_examples)
    clusters = []
    for c in range(k):
        mix = Counter(cats[i] for i in np.flatnonzero(res.labels == c))
        clusters.append({"id": c, "size": int(sum(mix.values())), "majority_category": mix.most_common(1)[0][0],
                         "categories": dict(mix.most_common()), "top_terms": terms[c], "examples": exs[c]})
    assignments = {}
    train_asg = clf.classify_many(E_tr)
    for j, i in enumerate(tr):  # training prompts keep their k-means cluster (= nearest centroid)
        a = train_asg[j]
        assignments[prompts[i].qid] = {"category": prompts[i].category, "split": "train",
                                       "cluster": int(res.labels[j]), "nearest": a.nearest,
                                       "confidence": round(a.confidence, 4)}
    for i, a in zip(ho, clf.classify_many(E_ho) if ho else []):
        assignments[prompts[i].qid] = {"category": prompts[i].category, "split": "heldout", "cluster": a.label,
                                       "nearest": a.nearest, "confidence": round(a.confidence, 4)}
    names = sorted(set(cats))
    cat_c = np.stack([X[[n == c for n in cats]].mean(0) for c in names])
    return TaskArtifact(
        clf, {**embed_info, "dim": int(E.shape[1])}, prompts_info,
        {"seed": cfg.seed, "holdout": cfg.holdout, "train": [prompts[i].qid for i in tr],
         "heldout": [prompts[i].qid for i in ho]},
        {"k_range": list(cfg.k_range), "k": k, "silhouette": {str(kk): round(v, 6) for kk, v in scores.items()},
         "n_init": cfg.n_init, "radius_quantile": cfg.radius_quantile, "radius_slack": cfg.radius_slack,
         "train_purity": purity(res.labels, cats)},
        clusters, assignments, names, cat_c)


def purity(labels: np.ndarray, cats: list[str]) -> float:
    """Share of points whose category is their cluster's majority category."""
    good = 0
    for c in np.unique(labels):
        good += Counter(cats[i] for i in np.flatnonzero(labels == c)).most_common(1)[0][1]
    return good / len(cats)


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def evaluate(art: TaskArtifact, prompts: list, ids: list[list[int]], embedder, repeats: int = 20) -> dict:
    """Held-out accuracy against the category labels and latency per prompt (see module docstring).

    prompts/ids: the artifact's held-out prompts. Classification is timed ``repeats`` times per prompt
    (its best time: it takes microseconds, so one timing is mostly clock noise).
    """
    if not prompts:
        raise ValueError("no held-out prompts to evaluate")
    embed_s, classify_s, tokens = [], [], []
    rows = []
    ref_names = art.category_names
    for p, x in zip(prompts, ids):
        t0 = time.perf_counter()
        e = embedder(x)
        embed_s.append(time.perf_counter() - t0)
        tokens.append(embedder.last_tokens)
        if e is None:
            rows.append((p, None, None))
            continue
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            a = art.classifier.classify(e)
            best = min(best, time.perf_counter() - t0)
        classify_s.append(best)
        ref = None
        if art.category_centroids is not None and ref_names:
            f = features(e, art.classifier.mean, art.classifier.scale)
            ref = ref_names[int(np.argmin(np.linalg.norm(art.category_centroids - f, axis=1)))]
        rows.append((p, a, ref))
    per_cat: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    correct = fallback = ref_ok = stored_same = 0
    for p, a, ref in rows:
        pred = art.cluster_category(a.label) if a is not None else None
        ok = pred == p.category
        correct += ok
        fallback += a is None or a.label is None
        ref_ok += ref == p.category
        per_cat[p.category][0] += ok
        per_cat[p.category][1] += 1
        stored = art.assignments.get(p.qid, {}).get("cluster", "missing")
        stored_same += (a.label if a is not None else None) == stored
    n = len(rows)
    ms = lambda xs: {"median": 1e3 * statistics.median(xs), "p95": 1e3 * _pct(xs, 0.95),  # noqa: E731
                     "mean": 1e3 * statistics.fmean(xs)}
    return {
        "n_heldout": n, "k": art.k, "accuracy": correct / n, "fallback_rate": fallback / n,
        "accuracy_reference_category_centroids": ref_ok / n if ref_names else None,
        "train_purity": art.fit.get("train_purity"),
        "per_category": {c: {"accuracy": v[0] / v[1], "n": v[1]} for c, v in sorted(per_cat.items())},
        "same_as_fit_assignment": stored_same / n,
        "latency_ms": {"classify": ms(classify_s), "embedding_forward": ms(embed_s),
                       "embedding_tokens_mean": statistics.fmean(tokens)},
    }


def print_eval(rep: dict) -> None:
    print(f"held-out prompts: {rep['n_heldout']}, clusters: {rep['k']}")
    print(f"accuracy vs category (cluster -> majority category; fallback = wrong): {rep['accuracy']:.3f}")
    print(f"fallback (far from every cluster): {rep['fallback_rate']:.3f}")
    if rep["accuracy_reference_category_centroids"] is not None:
        print(f"reference, nearest per-category centroid (supervised): "
              f"{rep['accuracy_reference_category_centroids']:.3f}")
    print(f"training-cluster purity (ceiling for k={rep['k']}): {rep['train_purity']:.3f}")
    for c, v in rep["per_category"].items():
        print(f"  {c:<16} {v['accuracy']:.2f}  (n={v['n']})")
    lat = rep["latency_ms"]
    print(f"latency per prompt: classify {lat['classify']['median']:.3f} ms median "
          f"({lat['classify']['p95']:.3f} p95); embedding forward {lat['embedding_forward']['median']:.1f} ms "
          f"median ({lat['embedding_forward']['p95']:.1f} p95) over {lat['embedding_tokens_mean']:.0f} tokens mean")
