"""User-facing API: a chain spec and text in, text and statistics out.

    sr = SpecRouter.from_chain("0.5b>1.5b")              # draft 0.5B, target 1.5B
    out = sr.generate(["def fib(n):"], SamplingParams(max_new_tokens=64))

Chain syntax: levels joined by ``>``, lowest (drafter) first, target last. A level is ``ngram``,
a default model name (``0.5b``, ``qwen2.5-coder-1.5b``…), an HF folder or a GGUF file. A single
level is the target alone. ``auto`` lets the adaptive router choose, per row and step, among the
sub-chains of a pool (default ``ngram>0.5b@int4>1.5b``: the int4 copy of the 0.5B drafts; it
beat the bf16 0.5B as a draft on Spec-Bench, see the README).

Boundary: this layer owns text (tokenizer, chat template, stop strings); the engine owns ids.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from .drafters.model_level import ModelLevel
from .engine import Generation, SpeculativeEngine
from .model.loader import LoadedModel, check_same_vocab, load_model, parse_dtype
from .model.registry import home
from .router.adaptive import AdaptiveRouter
from .router.fixed import FixedRouter
from .router.profiler import Profiler
from .router.similarity import Similarity, merged_prior, prior_from_text
from .sampling import SamplingParams
from .speclen import FixedLength, parse_length_policy
from .speculate import NGRAM
from .tokenizer import Tokenizer


# The pool ``--chain auto`` routes over when none is given depends on which low-bit kernel this
# machine runs fast (``default_pool``). Measured on each kind (README "Measured"):
# * native bf16 (AVX512-BF16/AMX CPUs, CUDA): bf16 target, int4 0.5B draft (the int4pack kernel is
#   2-2.6x faster than prepacked bf16 there);
# * AVX2-only CPUs (fp32 target): the int4/int8 pack kernels are 2-6x slower than dense fp32 there,
#   fbgemm's w8a8 is 2.6x faster per token, so the drafts are w8a8 copies of the 0.5B and the target.
DEFAULT_POOL = "ngram>0.5b@int4>1.5b"  # native bf16
DEFAULT_POOL_FP32 = "ngram>0.5b@w8a8>1.5b@w8a8>1.5b"  # AVX2-only CPUs


def default_pool(device: str = "cpu", dtype: str | torch.dtype = "auto") -> str:
    """``DEFAULT_POOL`` where the target computes in bf16 (or on a GPU: w8a8 is a CPU kernel),
    else ``DEFAULT_POOL_FP32``."""
    if str(device).startswith("cuda") or parse_dtype(dtype) == torch.bfloat16:
        return DEFAULT_POOL
    return DEFAULT_POOL_FP32


def parse_chain(chain: str) -> list[str]:
    levels = [x.strip() for x in chain.split(">")]
    if not chain.strip() or any(not x for x in levels):
        raise ValueError(f"invalid chain {chain!r}: expected levels joined by '>', e.g. 'ngram>0.5b>1.5b'")
    if levels[-1] == "ngram":
        raise ValueError("the last level of a chain is the target and must be a model, not 'ngram'")
    if "ngram" in levels[1:]:
        raise ValueError("'ngram' can only be the lowest level of a chain")
    return levels


def is_twin(a: LoadedModel, b: LoadedModel) -> bool:
    """Same weights (same source folder and shapes) in possibly different precisions, with KV caches
    of the same layout: one can take the other's prompt keys/values (``ModelLevel.twin``)."""
    return (a.folder.resolve() == b.folder.resolve() and a.args == b.args
            and a.model.dtype == b.model.dtype and a.model.device == b.model.device)


@dataclass
class Output:
    text: str
    tokens: list[int]
    finish_reason: str
    prompt_tokens: int
    stats: object  # GenerationStats

    @property
    def mean_accepted_length(self) -> float:
        return self.stats.mean_accepted_length(len(self.tokens))


CALIBRATION_TEXT = """def merge_sorted(a, b):
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            out.append(a[i]); i += 1
        else:
            out.append(b[j]); j += 1
    return out + a[i:] + b[j:]

The train leaves at 3:15 pm and travels 120 km at 80 km/h, so it arrives 1.5 hours later, at 4:45 pm.
Thank you for your question! Here are three tips for a good night's sleep: keep a regular schedule,
avoid screens before bed, and keep your bedroom cool and dark."""


class SpecRouter:
    """A pool of levels, an engine over it, and the tokenizer around it.

    ``levels`` is the chain (lowest first, target last), or with ``auto=True`` the pool the
    adaptive router picks sub-chains from. ``spec_len`` sets the top draft length policy
    (default: heuristic for a fixed chain, the router's cost model under ``auto``).
    """

    def __init__(self, models: dict[str, LoadedModel], levels: list[str], spec_len: str | None = None,
                 auto: bool = False, max_seq_len: int = 4096, max_batch: int = 8, ngram: tuple[int, int] = (3, 2),
                 explore: float = 0.05, progress: bool = False, batch_cap: bool = True, exact: bool = True):
        self.models, self.levels = models, list(levels)
        self.target = models[levels[-1]]
        self.tokenizer: Tokenizer = self.target.tokenizer
        chain_models = [models[x] for x in levels if x != NGRAM]
        check_same_vocab(chain_models)
        vocab = min(m.args.vocab_size for m in chain_models)
        self.max_seq_len = min(max_seq_len, *(m.args.max_position for m in chain_models))
        pool: dict = {x: ModelLevel(models[x].model, x, vocab, self.max_seq_len) for x in levels if x != NGRAM}
        for name, lv in pool.items():
            if name != levels[-1] and is_twin(models[name], self.target):
                lv.twin = pool[levels[-1]]
        if NGRAM in levels:
            pool[NGRAM] = ngram
        self.pool = pool
        if auto:
            self.router = self._adaptive_router(pool, max_batch, spec_len, ngram, explore, progress)
        elif spec_len == "costmodel":
            # the router's closed-form draft lengths for this one chain, where 0 (the target alone,
            # probing now and then) is a length too: a row whose draft stopped paying stops drafting
            self.router = self._adaptive_router(pool, max_batch, None, ngram, 0.0, progress,
                                                [tuple(levels), (levels[-1],)])
        elif spec_len is not None and spec_len.endswith("+cost"):
            # a band-aware policy (dsde+cost) on this one chain: the adaptive router, restricted to
            # it and not exploring, supplies the profiled cost band; the policy picks k inside it
            policy = parse_length_policy(spec_len.removesuffix("+cost"))
            if not hasattr(policy, "set_band") or len(levels) < 2:
                raise ValueError(f"{spec_len!r}: '+cost' needs a drafting chain and a band-aware policy (dsde)")
            self.router = self._adaptive_router(pool, max_batch, None, ngram, 0.0, progress, [tuple(levels)])
            self.router.policy = policy
        else:
            policy = parse_length_policy(spec_len or "heuristic") if len(levels) > 1 else FixedLength(0)
            self.router = FixedRouter(tuple(levels), policy)
        self.engine = SpeculativeEngine(pool, levels[-1], self.router, self.tokenizer.eos_ids, self.max_seq_len,
                                        max_batch, batch_cap, exact)

    def _adaptive_router(self, pool, max_batch, spec_len, ngram, explore, progress,
                         candidates=None) -> AdaptiveRouter:
        models = {n: lv for n, lv in pool.items() if n != NGRAM}
        profiler = Profiler.calibrate(models, max_batch, cache_dir=home() / "profiles", progress=progress)
        for lv in models.values():
            lv.on_timing = profiler.observe
        ids = self.tokenizer.encode(CALIBRATION_TEXT)
        prior, match, precision = prior_from_text(models, self.levels, ids, ngram if NGRAM in pool else None)
        sim = Similarity(merged_prior(prior, precision), match)
        policy = parse_length_policy(spec_len) if spec_len else None
        return AdaptiveRouter(tuple(self.levels), profiler, sim, candidates, explore=explore, length_policy=policy,
                              ngram=ngram)

    @classmethod
    def from_chain(cls, chain: str, dtype: str = "auto", device: str = "cpu", progress: bool = True,
                   pool: str | None = None, quant: str = "dense", **kw) -> "SpecRouter":
        """``chain`` is a chain, or ``auto`` with ``pool`` (a chain-like path) for the adaptive router.
        A level may name its precision (``1.5b@int4>1.5b``: the same model twice, two levels);
        ``quant`` is the precision of levels that do not."""
        if chain == "auto":
            levels = parse_chain(pool or default_pool(device, dtype))
            kw["auto"] = True
        else:
            levels = parse_chain(chain)
        models = {}
        for name in levels:
            if name != "ngram" and name not in models:
                if progress:
                    print(f"loading {name} ({dtype}) ...", file=sys.stderr, flush=True)
                models[name] = load_model(name, dtype=dtype, device=device, quant=quant, progress=progress)
        return cls(models, levels, progress=progress, **kw)

    # ------------------------------------------------------------------ prompts
    def encode_prompt(self, prompt: str | list[dict], chat: bool = True) -> list[int]:
        """A string is sent as one user message when ``chat``; a list of messages always is a chat."""
        if isinstance(prompt, list):
            return self.tokenizer.chat(prompt)
        if chat and getattr(self.tokenizer.hf, "chat_template", None) is not None:
            return self.tokenizer.chat([{"role": "user", "content": prompt}])
        return self.tokenizer.encode(prompt)

    def stop_check(self, stop: tuple[str, ...]):
        """Engine callback for stop strings: decodes only a tail of the generated ids."""
        if not stop:
            return None
        window = max(16, 4 * max(len(s) for s in stop))

        def check(ids: list[int]) -> bool:
            tail = self.tokenizer.decode(ids[-window:])
            return any(s in tail for s in stop)
        return check

    def finish_text(self, tokens: list[int], stop: tuple[str, ...]) -> str:
        text = self.tokenizer.decode(tokens)
        cut = min((text.find(s) for s in stop if s in text), default=-1)
        return text[:cut] if cut >= 0 else text

    def generate_ids(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
                     on_tokens=None, on_target_probs=None) -> list[Generation]:
        plist = params if isinstance(params, list) else [params] * len(prompts)
        return self.engine.generate(prompts, plist, [self.stop_check(p.stop) for p in plist], on_tokens,
                                    on_target_probs)

    def generate(self, prompts: list[str | list[dict]], params: SamplingParams | list[SamplingParams],
                 chat: bool = True, on_tokens=None) -> list[Output]:
        ids = [self.encode_prompt(p, chat) for p in prompts]
        plist = params if isinstance(params, list) else [params] * len(prompts)
        gens = self.generate_ids(ids, plist, on_tokens)
        return [Output(self.finish_text(g.tokens, sp.stop), g.tokens, g.finish_reason, len(g.prompt), g.stats)
                for g, sp in zip(gens, plist)]
