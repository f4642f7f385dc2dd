"""Human-readable cluster descriptions: top terms (class-based TF-IDF) and example prompts.

Pure functions over texts and cluster labels. Terms are lowercased words of 3+ letters (regex),
minus a short stop list. A term's score in cluster c is df_c(t) / |c| * log(N / df(t)): frequent
among the cluster's prompts, rare across all prompts (document frequencies, so one long prompt
cannot dominate).
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

WORD = re.compile(r"[a-z][a-z']{2,}")
STOP = frozenset("""the and for are but not you your with this that from have has had was were will would can
could should what which who whom whose when where why how all any each few more most other some such only own
same than too very just also into over under about after before between both there their them they then these
those its it's our out off one two her his him she been being does did doing here while during again further
once because until against above below use using please given following based write answer question text""".split())


def terms(text: str) -> set[str]:
    return {w for w in WORD.findall(text.lower()) if w not in STOP}


def top_terms(texts: list[str], labels: np.ndarray, k: int, n: int = 8) -> list[list[tuple[str, float]]]:
    """For each cluster 0..k-1, its ``n`` best (term, score) pairs."""
    docs = [terms(t) for t in texts]
    df = Counter(w for d in docs for w in d)
    N = len(docs)
    out = []
    for c in range(k):
        members = [docs[i] for i in np.flatnonzero(labels == c)]
        if not members:
            out.append([])
            continue
        dfc = Counter(w for d in members for w in d)
        scores = {w: dfc[w] / len(members) * math.log(N / df[w]) for w in dfc}
        best = sorted(scores.items(), key=lambda x: (-x[1], x[0]))[:n]
        out.append([(w, round(s, 4)) for w, s in best])
    return out


def examples(texts: list[str], X: np.ndarray, labels: np.ndarray, centroids: np.ndarray, n: int = 3,
             width: int = 120) -> list[list[str]]:
    """For each cluster, the ``n`` member prompts nearest its centroid, cut to ``width`` characters."""
    out = []
    for c in range(len(centroids)):
        idx = np.flatnonzero(labels == c)
        d = np.linalg.norm(X[idx] - centroids[c], axis=1)
        out.append([_short(texts[i], width) for i in idx[np.argsort(d, kind="stable")[:n]]])
    return out


def _short(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[:width - 3] + "..."
