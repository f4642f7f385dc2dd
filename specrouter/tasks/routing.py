"""Task-aware routing: label each row at admission, keep acceptance statistics per task, and offer
the task's aligned draft as a candidate lowest level.

* ``TaskLabeler``   — at admission, the embedding level prefills a window of the prompt
                      (``ModelLevel.embed_prefix``: its cache keeps that prefix, so the pass is the
                      level's own prefill, not an extra one) and the classifier labels the row
                      (None: far from every cluster -> the general draft).
* ``TaskSimilarity``— one ``Similarity`` per task label (plus None): a row's pair estimates start
                      from, and feed, its own task's global estimates.
* ``TaskRouter``    — the adaptive router whose candidates for a row of task t are the pool's chains
                      plus those with the base draft replaced by t's aligned draft.
* ``TaskChainRouter``— a fixed chain whose draft level is replaced, per row, by the row's aligned
                      draft (the "task-routed drafts" system of ``bench``).

Losslessness is untouched: aligned drafts are ordinary levels, and the target verifies every token.
The engine calls ``label_row(slot, prompt)`` right after ``add_row`` (see ``engine._admit``).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

from ..router.adaptive import AdaptiveRouter
from ..router.fixed import FixedRouter
from ..router.similarity import Similarity
from ..speculate import PairFeedback, Plan
from .embed import EmbedSpec, pool


class TaskLabeler:
    def __init__(self, classifier, level, spec: EmbedSpec, min_confidence: float = 0.0):
        self.classifier, self.level, self.spec, self.min_confidence = classifier, level, spec, min_confidence
        self.log: deque[dict] = deque(maxlen=4096)  # latest admissions: label, confidence, embed_s, classify_s

    def __call__(self, slot: int, prompt: list[int]) -> int | None:
        w = self.spec.window(len(prompt))
        if w is None:
            return None
        s, e = w
        t0 = time.perf_counter()
        hidden = self.level.embed_prefix(slot, prompt[:e])
        t1 = time.perf_counter()
        a = self.classifier.classify(pool(hidden, s))
        label = a.label if a.confidence >= self.min_confidence else None
        self.log.append({"label": label, "nearest": a.nearest, "confidence": a.confidence,
                         "embed_s": t1 - t0, "classify_s": time.perf_counter() - t1})
        return label


def substitute(chain: tuple[str, ...], draft: str, level: str) -> tuple[str, ...]:
    return tuple(level if x == draft else x for x in chain)


class TaskSimilarity:
    """The ``Similarity`` interface, with estimates kept separately per task label."""

    def __init__(self, labels: list[int], make: Callable[[int | None], Similarity]):
        self.by_task = {t: make(t) for t in [None, *labels]}
        self.row_task: list[int | None] = []

    def add_row(self, slot: int) -> None:
        for s in self.by_task.values():
            s.add_row(slot)
        self.row_task.append(None)

    def remove_row(self, slot: int, last: int) -> None:
        for s in self.by_task.values():
            s.remove_row(slot, last)
        self.row_task[slot] = self.row_task[last]
        self.row_task.pop()

    def set_task(self, slot: int, label: int | None) -> None:
        if label not in self.by_task:
            raise ValueError(f"unknown task label {label!r}")
        self.row_task[slot] = label

    def _sim(self, slot: int | None) -> Similarity:
        if slot is not None and slot < len(self.row_task):
            return self.by_task[self.row_task[slot]]
        return self.by_task[None]

    def observe(self, fb: PairFeedback) -> None:
        self._sim(fb.slot).observe(fb)

    def alpha(self, lower: str, upper: str, slot: int | None = None) -> float:
        return self._sim(slot).alpha(lower, upper, slot)

    def match_rate(self, upper: str, slot: int | None = None) -> float:
        return self._sim(slot).match_rate(upper, slot)

    def report(self) -> dict:
        """{task: {"lower>upper": alpha}} of every pair a task has seen."""
        return {str(t): {f"{lo}>{up}": round(e.alpha(s.min_evidence), 4) for (lo, up), e in s.glob.items()}
                for t, s in self.by_task.items() if s.glob}


class TaskRouter(AdaptiveRouter):
    def __init__(self, pool: tuple[str, ...], profiler, similarity: TaskSimilarity, labeler: TaskLabeler,
                 draft: str, task_levels: dict[int, str], candidates: list[tuple[str, ...]] | None = None, **kw):
        super().__init__(pool, profiler, similarity, candidates, **kw)
        self.labeler, self.draft, self.task_levels = labeler, draft, dict(task_levels)
        base = list(self.candidates)
        self.task_candidates: dict[int | None, list[tuple[str, ...]]] = {None: base}
        for t in similarity.by_task:
            lv = self.task_levels.get(t)
            extra = [substitute(c, draft, lv) for c in base if draft in c] if lv is not None else []
            self.task_candidates[t] = base + extra

    def candidates_for(self, slot: int) -> list[tuple[str, ...]]:
        return self.task_candidates[self.sim.row_task[slot]]

    def label_row(self, slot: int, prompt: list[int]) -> None:
        self.sim.set_task(slot, self.labeler(slot, prompt))


class TaskChainRouter(FixedRouter):
    def __init__(self, chain: tuple[str, ...], length_policy, labeler: TaskLabeler, draft: str,
                 task_levels: dict[int, str], inner_k: dict[str, int] | None = None):
        if draft not in chain[:-1]:
            raise ValueError(f"draft level {draft!r} is not a drafter of the chain {'>'.join(chain)}")
        super().__init__(chain, length_policy, inner_k)
        self.labeler, self.draft, self.task_levels = labeler, draft, dict(task_levels)
        self.row_task: list[int | None] = []
        self.tops = {chain[-2]} | (set(self.task_levels.values()) if chain[-2] == draft else set())

    def add_row(self, slot: int) -> None:
        super().add_row(slot)
        self.row_task.append(None)

    def remove_row(self, slot: int, last: int) -> None:
        super().remove_row(slot, last)
        self.row_task[slot] = self.row_task[last]
        self.row_task.pop()

    def label_row(self, slot: int, prompt: list[int]) -> None:
        self.row_task[slot] = self.labeler(slot, prompt)

    def plan(self, slot: int, ctx=None) -> Plan:
        p = super().plan(slot, ctx)
        lv = self.task_levels.get(self.row_task[slot])
        return p if lv is None else Plan(substitute(p.chain, self.draft, lv), p.ks)

    def observe(self, fb: PairFeedback) -> None:
        if len(self.chain) > 1 and fb.upper == self.chain[-1] and fb.lower in self.tops:
            self.policy.observe(fb.slot, fb)
