"""``specrouter quant-eval``: how far a quantized copy of a model drifts from the model itself.

For each model X and scheme Q, on Spec-Bench prompts (first turn, chat template):
* X (as loaded: bf16 by default) greedily continues each prompt for ``new_tokens`` tokens;
* X and X@Q are teacher-forced over prompt + that continuation, and at every continuation
  position their next-token distributions p (X) and q (X@Q) are compared:
  - greedy agreement: argmax q == argmax p, i.e. how often X@Q drafting for X is accepted,
    token by token, when the prefix is right (greedy speculative decoding);
  - 1 - TVD = 1 - 0.5 |p - q|_1 at temperature 1: the probability that one drafted sample is
    accepted by speculative sampling;
* perplexity on a text sample that is not model output (every turn of each prompt, no chat
  template): ppl(X@Q) / ppl(X) - 1 is the drift.
All variants are loaded side by side and see the same tokens. Per-category agreement is printed
too (chat-like categories drift more than code or math). The last line is one JSON object.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass

import torch

from .spec_bench import BenchPrompt


# ----------------------------------------------------------------------------------------- math
def agreement_and_overlap(ref_logits: torch.Tensor, logits: torch.Tensor) -> tuple[int, float]:
    """ref_logits, logits: [P, V] float32 -> (#positions with equal argmax, sum over positions of
    1 - TVD(softmax(ref), softmax(logits)))."""
    if ref_logits.shape != logits.shape:
        raise ValueError(f"logit shapes differ: {tuple(ref_logits.shape)} vs {tuple(logits.shape)}")
    agree = int((ref_logits.argmax(-1) == logits.argmax(-1)).sum())
    tvd = 0.5 * (ref_logits.softmax(-1) - logits.softmax(-1)).abs().sum(-1)  # [P]
    return agree, float((1 - tvd).sum())


def total_nll(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """logits: [T, V] predicting targets: [T] -> summed negative log-likelihood (nats)."""
    return float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))


# ------------------------------------------------------------------------------------ model I/O
def teacher_forced(model, ids: list[int]) -> torch.Tensor:
    """[T, V] float32 logits of every position of ``ids`` (one prefill on a fresh cache)."""
    cache = model.new_cache(1, len(ids) + 1)
    return model(torch.tensor([ids]), cache)[0]


def greedy_continuation(model, ids: list[int], n: int, eos_ids) -> list[int]:
    cache = model.new_cache(1, len(ids) + n + 1)
    logits = model(torch.tensor([ids]), cache, logits_for="last")
    out = []
    for _ in range(n):
        tok = int(logits[0, -1].argmax())
        out.append(tok)
        if tok in eos_ids:
            break
        logits = model(torch.tensor([[tok]]), cache, logits_for="last")
    return out


@dataclass
class Tally:
    positions: int = 0
    agree: int = 0
    overlap: float = 0.0
    nll: float = 0.0
    text_tokens: int = 0

    def add(self, other: "Tally") -> None:
        self.positions += other.positions
        self.agree += other.agree
        self.overlap += other.overlap
        self.nll += other.nll
        self.text_tokens += other.text_tokens


def evaluate(base, variants: dict, prompts: list[BenchPrompt], new_tokens: int, max_prompt_tokens: int,
             log=print) -> dict:
    """base: LoadedModel (the reference X); variants: name -> LoadedModel (X@Q). Returns per
    variant {'overall': Tally, 'by_category': {cat: Tally}} plus the reference's text Tally."""
    tok = base.tokenizer
    everyone = {"__ref__": base, **variants}
    tallies = {name: {"overall": Tally(), "by_category": defaultdict(Tally)} for name in everyone}
    used = 0
    for i, p in enumerate(prompts):
        ids = tok.chat([{"role": "user", "content": p.text}])
        if len(ids) > max_prompt_tokens:
            log(f"[quant-eval] {base.name}: prompt {i + 1}/{len(prompts)} ({p.category}) skipped: {len(ids)} tokens "
                f"> --max-prompt-tokens {max_prompt_tokens}")
            continue
        used += 1
        t0 = time.perf_counter()
        cont = greedy_continuation(base.model, ids, new_tokens, tok.eos_ids)
        full = ids + cont
        text_ids = tok.encode(p.text)  # natural text: the question itself, no template
        span = slice(len(ids) - 1, len(full) - 1)  # positions predicting the continuation
        ref_logits = teacher_forced(base.model, full)[span]
        for name, lm in everyone.items():
            logits = ref_logits if name == "__ref__" else teacher_forced(lm.model, full)[span]
            agree, overlap = agreement_and_overlap(ref_logits, logits)
            text_logits = teacher_forced(lm.model, text_ids)
            t = Tally(len(cont), agree, overlap, total_nll(text_logits[:-1], torch.tensor(text_ids[1:])),
                      len(text_ids) - 1)
            tallies[name]["overall"].add(t)
            tallies[name]["by_category"][p.category].add(t)
        log(f"[quant-eval] {base.name}: prompt {i + 1}/{len(prompts)} ({p.category}, {len(ids)}+{len(cont)} "
            f"tokens, {time.perf_counter() - t0:.1f}s)")
    if used == 0:
        raise ValueError(f"no prompt fits in --max-prompt-tokens {max_prompt_tokens}")
    return tallies


def summarize(tallies: dict) -> dict:
    ref = tallies["__ref__"]["overall"]
    ppl_ref = math.exp(ref.nll / max(ref.text_tokens, 1))
    rows = {}
    for name, t in tallies.items():
        if name == "__ref__":
            continue
        o = t["overall"]
        ppl = math.exp(o.nll / max(o.text_tokens, 1))
        rows[name] = {"greedy_agreement": o.agree / o.positions, "one_minus_tvd": o.overlap / o.positions,
                      "ppl": ppl, "ppl_ref": ppl_ref, "ppl_drift": ppl / ppl_ref - 1, "positions": o.positions,
                      "text_tokens": o.text_tokens,
                      "agreement_by_category": {c: c_t.agree / c_t.positions
                                                for c, c_t in sorted(t["by_category"].items()) if c_t.positions}}
    return rows


def print_report(results: dict) -> None:
    print(f"{'variant':<38}{'vs':<22}{'greedy agree':>13}{'1-TVD':>8}{'ppl':>9}{'ppl ref':>9}{'drift':>8}"
          f"{'positions':>10}")
    for name, r in results.items():
        print(f"{name:<37} {r['reference']:<22}{r['greedy_agreement']:>13.3f}{r['one_minus_tvd']:>8.3f}"
              f"{r['ppl']:>9.3f}{r['ppl_ref']:>9.3f}{100 * r['ppl_drift']:>7.2f}%{r['positions']:>10}")
    cats = sorted({c for r in results.values() for c in r["agreement_by_category"]})
    if cats:
        print("greedy agreement by category:")
        print(f"{'variant':<38}" + "".join(f"{c[:10]:>11}" for c in cats))
        for name, r in results.items():
            print(f"{name:<37} " + "".join(f"{r['agreement_by_category'].get(c, float('nan')):>11.3f}" for c in cats))
    print(json.dumps(results))


def run(models: list[str], quants: list[str], prompts: list[BenchPrompt], dtype: str, new_tokens: int,
        max_prompt_tokens: int) -> dict:
    from ..model.loader import load_model

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    results = {}
    for spec in models:
        log(f"[quant-eval] loading {spec} ({dtype}) and {', '.join(f'{spec}@{q}' for q in quants)}")
        base = load_model(spec, dtype=dtype)
        variants = {}
        for q in quants:
            lm = load_model(f"{spec}@{q}", dtype=dtype)
            variants[lm.name] = lm
        rows = summarize(evaluate(base, variants, prompts, new_tokens, max_prompt_tokens, log))
        for name, r in rows.items():
            results[name] = {"reference": base.name, **r}
        del base, variants
    return results
