"""A SpecRouter whose pool carries per-task aligned drafts and whose router is task-aware.

    sr = TaskSpecRouter.from_chain("0.5b>1.5b", tasks="tasks.json", adapters="aligned/")
    sr = TaskSpecRouter.from_chain("auto", pool="ngram>0.5b>1.5b", tasks="tasks.json", adapters="aligned/")

On top of the plain SpecRouter's pool it adds one level per adapter, ``{draft}#t{task}``: a model
that shares every base tensor of the draft (``lora.adapted``) with its own KV cache. All adapters
load at start; a request's draft is chosen by its row's task label, so switching costs no reload.
(Memory per aligned level: its adapter plus one KV cache of max_batch x max_seq_len.)

* a fixed chain becomes a ``TaskChainRouter``: each row's draft is its task's aligned draft
  (the base draft when the prompt falls back or its task has no adapter);
* ``auto`` becomes a ``TaskRouter``: per-task acceptance statistics, the aligned draft as an extra
  candidate lowest level. Its priors for the aligned pairs are the alignment's held-out greedy
  agreements (manifest), else the base draft's calibration prior.

The embedding level is the chain's draft whose model the task artifact was fit with.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

from ..api import SpecRouter
from ..drafters.model_level import ModelLevel
from ..engine import SpeculativeEngine
from ..router.adaptive import AdaptiveRouter
from ..router.similarity import Similarity
from ..speculate import NGRAM
from .align import load_adapters
from .artifact import TaskArtifact, sha256_file
from .embed import EmbedSpec
from .lora import adapted
from .routing import TaskChainRouter, TaskLabeler, TaskRouter, TaskSimilarity


def task_level_name(draft: str, task: int) -> str:
    return f"{draft}#t{task}"


class TaskSpecRouter(SpecRouter):
    def __init__(self, models: dict, levels: list[str], tasks: "str | Path | TaskArtifact",
                 adapters: "str | Path | None" = None, min_confidence: float = 0.0, **kw):
        super().__init__(models, levels, **kw)
        if len(levels) < 2:
            raise ValueError("task routing needs a chain with a draft level (e.g. 0.5b>1.5b)")
        self.tasks = tasks if isinstance(tasks, TaskArtifact) else TaskArtifact.load(tasks)
        art, target = self.tasks, levels[-1]
        drafts = [x for x in levels[:-1] if x != NGRAM]
        emb = next((x for x in drafts if models[x].name == art.embed["model"]), None)
        if emb is None:
            have = ", ".join(models[x].name for x in drafts) or "none"
            raise ValueError(f"the task artifact embeds prompts with {art.embed['model']!r}, but no draft level of "
                             f"{'>'.join(levels)} is that model ({have})")
        spec = EmbedSpec(art.embed["pool_from"], art.embed["max_tokens"])
        self.labeler = TaskLabeler(art.classifier, self.pool[emb], spec, min_confidence)
        self.manifest, task_levels, draft = None, {}, emb
        if adapters is not None:
            self.manifest, ads = load_adapters(adapters)
            aligned_on = self.manifest["tasks_artifact"]["sha256"]
            if not isinstance(tasks, TaskArtifact) and sha256_file(tasks) != aligned_on:
                raise ValueError(f"the adapters in {adapters} were aligned on another task artifact "
                                 f"({self.manifest['tasks_artifact']['path']})")
            draft = next((x for x in drafts if models[x].name == self.manifest["draft"]), None)
            if draft is None:
                raise ValueError(f"the adapters in {adapters} are for {self.manifest['draft']!r}; no draft level of "
                                 f"{'>'.join(levels)} is that model")
            if models[target].name != self.manifest["target"]:
                print(f"[tasks] note: adapters were aligned to {self.manifest['target']!r}, the target here is "
                      f"{models[target].name!r} (still lossless; acceptance may be lower)", file=sys.stderr)
            base, vocab = self.pool[draft], self.pool[target].vocab
            for t, ad in sorted(ads.items()):
                if t >= art.k:
                    raise ValueError(f"adapter for task {t}, but the artifact has {art.k} tasks")
                name = task_level_name(draft, t)
                self.pool[name] = ModelLevel(adapted(base.model, ad), name, vocab, self.max_seq_len)
                task_levels[t] = name
        self.task_levels, self.draft = task_levels, draft
        old = self.router
        if isinstance(old, AdaptiveRouter):
            self.router = self._task_adaptive(old, draft, task_levels)
        else:
            self.router = TaskChainRouter(old.chain, old.policy, self.labeler, draft, task_levels)
        eng = self.engine
        self.engine = SpeculativeEngine(self.pool, target, self.router, self.tokenizer.eos_ids, self.max_seq_len,
                                        eng.max_batch, eng.batch_cap, eng.exact)

    def _task_adaptive(self, old: AdaptiveRouter, draft: str, task_levels: dict[int, str]) -> TaskRouter:
        target = self.levels[-1]
        for t, name in task_levels.items():  # an aligned draft costs what its base draft costs, then learns
            old.profiler.tables[name] = copy.deepcopy(old.profiler.tables[draft])
            self.pool[name].on_timing = old.profiler.observe
        exact = {int(t): e.get("heldout_exact", {}) for t, e in (self.manifest or {}).get("tasks", {}).items()}

        def make(t: int | None) -> Similarity:
            prior, match = dict(old.sim.prior), dict(old.sim.match_prior)
            name = task_levels.get(t)
            if name is not None:
                for (lo, up), v in old.sim.prior.items():
                    if draft in (lo, up):
                        prior[(name if lo == draft else lo, name if up == draft else up)] = v
                match[name] = old.sim.match_prior.get(draft, 0.3)
                ex = exact.get(t, {})
                if "agreement" in ex.get("base", {}) and "agreement" in ex.get("aligned", {}):
                    prior[(draft, target)] = ex["base"]["agreement"]
                    prior[(name, target)] = ex["aligned"]["agreement"]
            return Similarity(prior, match, old.sim.decay_global, old.sim.decay_row, old.sim.min_evidence)

        sim = TaskSimilarity(list(range(self.tasks.k)), make)
        return TaskRouter(old.pool, old.profiler, sim, self.labeler, draft, task_levels, list(old.candidates),
                          explore=old.explore, k_max=old.k_max, length_policy=old.policy,
                          explore_slack=old.explore_slack, switch_margin=old.switch_margin,
                          ngram=old.shadow.ngram if old.shadow is not None else None)

    def task_of(self, chain: str) -> int | None:
        """The task whose aligned draft a chain string (as in ``GenerationStats.chains``) used."""
        for t, name in self.task_levels.items():
            if name in chain.split(">"):
                return t
        return None


