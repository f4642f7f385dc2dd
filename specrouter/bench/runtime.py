"""Runtime speed: our forward vs transformers' forward of the same weights, measured in one run.

For each model: decode seconds per token (one new token over a warm cache), and the cost of a
verification pass over T tokens relative to one token. Prints a table and, last, a JSON line.
The "floor" is the time to stream the model's weight bytes once at ``--gbps`` (bandwidth of a bf16
matmul on this machine); achieved GB/s = weight bytes / measured time.

With several precisions (``quants``: dense, int8, int4…) every variant of a model is loaded side
by side and timed in interleaved rounds (A B C A B C …), so background load hits them alike; the
per-round times give a spread, and "vs dense" divides the dense variant's s/token by each one's.
"""

from __future__ import annotations

import json
import sys
import time

import torch


def _weight_bytes(model) -> int:
    """Bytes of weights one decode step reads: every parameter and buffer (quantized layers keep
    their packed weights and scales as buffers). The embedding table is a plain attribute, not
    counted: decode reads one row of it (the head, tied or not, is its own matrix)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def time_ours(model, prompt_len: int, n_tokens: int, verify_lens: tuple[int, ...]) -> dict:
    cache = model.new_cache(1, prompt_len + n_tokens + 64)
    prompt = torch.randint(0, model.args.vocab_size, (1, prompt_len))
    model(prompt, cache, logits_for="last")
    tok = torch.tensor([[1]])
    for _ in range(3):  # warm-up
        model(tok, cache, logits_for="last")
    t0 = time.perf_counter()
    for _ in range(n_tokens):
        logits = model(tok, cache, logits_for="last")
        tok = logits[:, -1:].argmax(-1)
    decode = (time.perf_counter() - t0) / n_tokens
    verify = {}
    for T in verify_lens:
        base = cache.lengths[0]
        ts = []
        for _ in range(max(3, n_tokens // 8)):
            t0 = time.perf_counter()
            model(torch.randint(0, 100, (1, T)), cache)
            ts.append(time.perf_counter() - t0)
            cache.rollback(0, base)
        verify[T] = sorted(ts)[len(ts) // 2] / decode
    return {"decode_s": decode, "verify_rel": verify}


def time_hf(folder, dtype, prompt_len: int, n_tokens: int) -> float:
    from transformers import AutoModelForCausalLM, DynamicCache

    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).eval()
    with torch.inference_mode():
        cache = DynamicCache(config=hf.config)
        prompt = torch.randint(0, hf.config.vocab_size, (1, prompt_len))
        out = hf(input_ids=prompt, past_key_values=cache, use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
        for _ in range(3):
            out = hf(input_ids=tok, past_key_values=out.past_key_values, use_cache=True)
        t0 = time.perf_counter()
        for _ in range(n_tokens):
            out = hf(input_ids=tok, past_key_values=out.past_key_values, use_cache=True)
            tok = out.logits[:, -1:].argmax(-1)
        return (time.perf_counter() - t0) / n_tokens


def run(specs: list[str], dtype: str, prompt_len: int, n_tokens: int, gbps: float, with_hf: bool = True,
        quants: tuple[str, ...] = ("dense",), rounds: int = 3) -> dict:
    from ..model.loader import load_model, parse_dtype, resolve
    from ..model.quant import QuantScheme

    def log(msg):
        print(f"[runtime] {msg}", file=sys.stderr, flush=True)

    results, firsts = {}, []
    schemes = [QuantScheme.parse(q) for q in quants]
    for spec in specs:
        variants = {}
        for sch in schemes:
            label = spec if sch.is_dense else f"{spec}@{sch.short()}"
            log(f"{label}: loading")
            variants[label] = load_model(label, dtype=dtype).model
        firsts.append(next(iter(variants)))
        per_tok = max(4, n_tokens // rounds)
        log(f"{spec}: timing {', '.join(variants)} in {rounds} interleaved rounds of {per_tok} tokens")
        runs = {label: [] for label in variants}
        for _ in range(rounds):
            for label, model in variants.items():
                runs[label].append(time_ours(model, prompt_len, per_tok, (4, 8)))
        dense_label = next((lb for lb, sch in zip(variants, schemes) if sch.is_dense), None)
        for label, model in variants.items():
            decodes = sorted(r["decode_s"] for r in runs[label])
            decode = decodes[len(decodes) // 2]
            verify = {T: sorted(r["verify_rel"][T] for r in runs[label])[len(decodes) // 2] for T in (4, 8)}
            nbytes = _weight_bytes(model)
            row = {"ours_s_per_token": decode, "decode_min_s": decodes[0], "decode_max_s": decodes[-1],
                   "verify4_rel": verify[4], "verify8_rel": verify[8], "weight_gb": nbytes / 1e9,
                   "floor_s": nbytes / 1e9 / gbps, "ours_gbps": nbytes / 1e9 / decode}
            results[label] = row
        if dense_label is not None:
            for label in variants:
                results[label]["vs_dense"] = results[dense_label]["ours_s_per_token"] / results[label]["ours_s_per_token"]
        folder = resolve(spec, progress=False)[1] if with_hf and dense_label else None
        del variants, runs
        if folder is not None:
            log(f"{spec}: timing transformers")
            hf = time_hf(folder, parse_dtype(dtype), prompt_len, n_tokens)
            results[dense_label].update({"hf_s_per_token": hf,
                                         "ours_vs_hf": results[dense_label]["ours_s_per_token"] / hf})
    if len(specs) >= 2:
        results["draft_target_cost_ratio"] = results[firsts[0]]["ours_s_per_token"] / results[firsts[-1]]["ours_s_per_token"]
    return results


def print_table(results: dict) -> None:
    nan = float("nan")
    print(f"{'model':<22}{'ours s/tok':>11}{'(min-max)':>16}{'vs dense':>9}{'HF s/tok':>10}{'ours/HF':>9}"
          f"{'GB':>6}{'GB/s':>7}{'floor s':>9}{'verify4':>9}{'verify8':>9}")
    for name, r in results.items():
        if not isinstance(r, dict):
            continue
        spread = f"{r.get('decode_min_s', nan):.4f}-{r.get('decode_max_s', nan):.4f}"
        print(f"{name:<22}{r['ours_s_per_token']:>11.4f}{spread:>16}{r.get('vs_dense', nan):>8.2f}x"
              f"{r.get('hf_s_per_token', nan):>10.4f}{r.get('ours_vs_hf', nan):>9.3f}{r['weight_gb']:>6.2f}"
              f"{r['ours_gbps']:>7.1f}{r['floor_s']:>9.4f}{r['verify4_rel']:>8.2f}x{r['verify8_rel']:>8.2f}x")
    if "draft_target_cost_ratio" in results:
        print(f"draft/target cost ratio (ours): {results['draft_target_cost_ratio']:.3f}")
    print(json.dumps(results))
