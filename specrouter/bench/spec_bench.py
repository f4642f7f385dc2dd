"""``specrouter bench``: Spec-Bench-format speed benchmark, every system measured in one process.

For each prompt (first turn, chat template applied) the systems run back to back — interleaved per
prompt, so a busy core or thermal drift hits them alike:
  * ``target``: the target alone on our runtime, greedy, one token per pass (the baseline every
    speedup divides: the fastest way to run the target alone);
  * ``target-exact``: the target alone with the engine's exact passes (at least two tokens wide,
    ``SpeculativeEngine(exact=True)``): the output every greedy match is checked against. A
    one-token pass rounds differently on CPU kernels, so ``target`` itself may match below 1.00;
  * ``hf_assisted``: transformers' ``generate(assistant_model=...)`` with the same two models;
  * one entry per chain / length policy of ours.
Per category and overall it reports tokens/s (total new tokens / total wall time), speedup vs
target and vs HF assisted, mean accepted length (tokens per target forward) and greedy match
(fraction of prompts whose output equals the ``target-exact`` output exactly). The last line printed is
one JSON object with the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class BenchPrompt:
    qid: str
    category: str
    text: str


def load_prompts(path: str | Path, categories: list[str] | None = None, per_category: int | None = None,
                 seed: int = 0) -> list[BenchPrompt]:
    """Read Spec-Bench-format JSONL (question_id, category, turns); keep the first turn."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    by_cat: dict[str, list[BenchPrompt]] = defaultdict(list)
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            turns = obj["turns"]
            text = turns[0] if isinstance(turns, list) else turns
            by_cat[str(obj["category"])].append(BenchPrompt(str(obj["question_id"]), str(obj["category"]), text))
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as e:
            raise ValueError(f"{path}:{n}: not a Spec-Bench record (question_id, category, turns): {e}") from None
    if categories:
        missing = [c for c in categories if c not in by_cat]
        if missing:
            raise ValueError(f"categories {missing} not in {path}; present: {sorted(by_cat)}")
        by_cat = {c: by_cat[c] for c in categories}
    out = []
    for cat, items in by_cat.items():
        if per_category is not None and per_category < len(items):
            items = random.Random(seed).sample(items, per_category) if seed else items[:per_category]
        out.extend(items)
    return out


class HFAssisted:
    """transformers' assisted generation with the same weights (loaded from the prepared folders)."""

    def __init__(self, target_folder: Path, draft_folder: Path, dtype: torch.dtype, temperature: float = 0.0,
                 seed: int = 0, ignore_eos: bool = False):
        from transformers import AutoModelForCausalLM

        self.temperature, self.seed, self.ignore_eos = temperature, seed, ignore_eos

        self.target = AutoModelForCausalLM.from_pretrained(str(target_folder), dtype=dtype).eval()
        self.draft = AutoModelForCausalLM.from_pretrained(str(draft_folder), dtype=dtype).eval()

    @torch.inference_mode()
    def generate(self, ids: list[int], max_new_tokens: int, eos_ids) -> list[int]:
        x = torch.tensor([ids])
        sampling = {"do_sample": False}
        if self.temperature > 0:  # transformers samples from the global RNG
            torch.manual_seed(self.seed)
            self.seed += 1
            sampling = {"do_sample": True, "temperature": self.temperature, "top_k": 0, "top_p": 1.0}
        if self.ignore_eos:  # transformers cannot run past EOS; it can forbid it until max_new_tokens
            sampling["min_new_tokens"] = max_new_tokens
        out = self.target.generate(x, attention_mask=torch.ones_like(x), assistant_model=self.draft,
                                   max_new_tokens=max_new_tokens, **sampling,
                                   eos_token_id=sorted(eos_ids), pad_token_id=min(eos_ids))
        return out[0, len(ids):].tolist()


def _summary(rows: list[dict], base_key: str = "target", hf_key: str = "hf_assisted") -> dict:
    """rows: per-prompt dicts {system: {"tokens": n, "time": s, "steps": k, "match": bool}}."""
    systems = [k for k in rows[0] if isinstance(rows[0][k], dict)]
    agg = {}
    for s in systems:
        toks = sum(r[s]["tokens"] for r in rows)
        t = sum(r[s]["time"] for r in rows)
        steps = sum(r[s].get("steps", 0) for r in rows)
        agg[s] = {"tokens_per_s": toks / t if t else 0.0, "tokens": toks, "time_s": t,
                  "mean_accepted": toks / steps if steps else None,
                  "greedy_match": sum(bool(r[s].get("match", True)) for r in rows) / len(rows)}
    for s in systems:
        agg[s]["speedup_vs_target"] = agg[s]["tokens_per_s"] / agg[base_key]["tokens_per_s"]
        if hf_key in agg:
            agg[s]["speedup_vs_hf"] = agg[s]["tokens_per_s"] / agg[hf_key]["tokens_per_s"]
    return agg


def print_report(per_cat: dict[str, dict], overall: dict, primary: str, extra: dict | None = None) -> None:
    cols = list(overall)
    print()
    print(f"{'category':<16}{'system':<28}{'tok/s':>8}{'vs target':>10}{'vs HF':>8}{'accepted':>9}{'match':>7}")
    for cat, agg in list(per_cat.items()) + [("OVERALL", overall)]:
        for s in cols:
            a = agg[s]
            acc = f"{a['mean_accepted']:.2f}" if a["mean_accepted"] else "-"
            hf = a.get("speedup_vs_hf")
            hf = f"{hf:.2f}x" if hf is not None and math.isfinite(hf) else "-"  # no HF run: no ratio
            print(f"{cat:<16}{s:<28}{a['tokens_per_s']:>8.2f}{a['speedup_vs_target']:>9.2f}x"
                  f"{hf:>8}{acc:>9}{a['greedy_match']:>7.2f}")
    keys = ("speedup_vs_target", "speedup_vs_hf", "greedy_match", "mean_accepted", "tokens_per_s")
    pick = lambda a: {k: a[primary].get(k) for k in keys}  # noqa: E731
    result = {"overall": pick(overall), "categories": {c: pick(a) for c, a in per_cat.items()},
              "systems": {s: {"overall": {k: overall[s].get(k) for k in keys},
                              "categories": {c: {k: a[s].get(k) for k in keys} for c, a in per_cat.items()}}
                          for s in cols}}
    if extra:
        result["routers"] = extra
    print(json.dumps(result))


def run_bench(prompts: list[BenchPrompt], systems: dict, tokenizer, max_new_tokens: int, hf: HFAssisted | None,
              eos_ids, batch_size: int = 1, on_rows=None) -> list[dict]:
    """systems: name -> callable(list of prompt ids, max_new) -> list of (tokens, steps[, chains])."""
    rows = []
    t_start = time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        group = prompts[i:i + batch_size]
        ids = [tokenizer.chat([{"role": "user", "content": p.text}]) for p in group]
        res: dict[str, list[dict]] = {}
        for name, fn in systems.items():
            t0 = time.perf_counter()
            outs = fn(ids, max_new_tokens)
            dt = time.perf_counter() - t0
            res[name] = [{"tokens": len(o[0]), "time": dt / len(group), "steps": o[1], "ids": o[0],
                          **({"chains": o[2]} if len(o) > 2 else {})} for o in outs]
        if hf is not None:
            res["hf_assisted"] = []
            for x in ids:
                t0 = time.perf_counter()
                out = hf.generate(x, max_new_tokens, eos_ids)
                res["hf_assisted"].append({"tokens": len(out), "time": time.perf_counter() - t0, "ids": out})
        for j, p in enumerate(group):
            row = {"qid": p.qid, "category": p.category}
            ref = res["target-exact" if "target-exact" in res else "target"][j]["ids"]
            for name in res:
                r = dict(res[name][j])
                ids = r.pop("ids")
                r["match"] = ids == ref
                r["digest"] = hashlib.sha1(repr(ids).encode()).hexdigest()[:12]  # compare runs without ids
                row[name] = r
            rows.append(row)
        if on_rows is not None:  # e.g. save partial results: a long run interrupted keeps what it measured
            on_rows(rows)
        done = min(i + batch_size, len(prompts))
        el = time.perf_counter() - t_start
        tgt = sum(r["target"]["tokens"] for r in rows) / max(1e-9, sum(r["target"]["time"] for r in rows))
        print(f"[bench] {done}/{len(prompts)} prompts, {el:.0f}s elapsed, ~{el / done * (len(prompts) - done):.0f}s "
              f"left; target {tgt:.2f} tok/s", file=sys.stderr, flush=True)
    return rows


def summarize(rows: list[dict]) -> tuple[dict, dict]:
    cats = defaultdict(list)
    for r in rows:
        cats[r["category"]].append(r)
    strip = lambda r: {k: v for k, v in r.items() if isinstance(v, dict)}  # noqa: E731
    per_cat = {c: _summary([strip(r) for r in rs]) for c, rs in cats.items()}
    return per_cat, _summary([strip(r) for r in rows])
