"""Runtime speed: our forward vs transformers' forward of the same weights, measured in one run.

For each model: decode seconds per token (one new token over a warm cache), and the cost of a
verification pass over T tokens relative to one token. Prints a table and, last, a JSON line.
The "floor" is the time to stream the model's weight bytes once at ``--gbps`` (bandwidth of a bf16
matmul on this machine); achieved GB/s = weight bytes / measured time.
"""

from __future__ import annotations

import json
import sys
import time

import torch


def _weight_bytes(model) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + [model.embed]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    # decode reads one embedding row, not the table (unless the head is tied to it)
    if model.lm_head.weight is not model.embed:
        total -= model.embed.numel() * model.embed.element_size()
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


def run(specs: list[str], dtype: str, prompt_len: int, n_tokens: int, gbps: float, with_hf: bool = True) -> dict:
    from ..model.loader import load_model, parse_dtype

    results = {}
    for spec in specs:
        print(f"[runtime] {spec}: loading", file=sys.stderr, flush=True)
        lm = load_model(spec, dtype=dtype)
        nbytes = _weight_bytes(lm.model)
        print(f"[runtime] {spec}: timing ours ({n_tokens} tokens)", file=sys.stderr, flush=True)
        ours = time_ours(lm.model, prompt_len, n_tokens, (4, 8))
        folder = lm.folder
        del lm
        row = {"ours_s_per_token": ours["decode_s"], "verify4_rel": ours["verify_rel"][4],
               "verify8_rel": ours["verify_rel"][8], "weight_gb": nbytes / 1e9,
               "floor_s": nbytes / 1e9 / gbps, "ours_gbps": nbytes / 1e9 / ours["decode_s"]}
        if with_hf:
            print(f"[runtime] {spec}: timing transformers", file=sys.stderr, flush=True)
            hf = time_hf(folder, parse_dtype(dtype), prompt_len, n_tokens)
            row.update({"hf_s_per_token": hf, "ours_vs_hf": ours["decode_s"] / hf})
        results[spec] = row
    if len(specs) >= 2:
        results["draft_target_cost_ratio"] = results[specs[0]]["ours_s_per_token"] / results[specs[-1]]["ours_s_per_token"]
    return results


def print_table(results: dict) -> None:
    print(f"{'model':<22}{'ours s/tok':>11}{'HF s/tok':>10}{'ours/HF':>9}{'GB/s':>7}{'floor s':>9}"
          f"{'verify4':>9}{'verify8':>9}")
    for name, r in results.items():
        if not isinstance(r, dict):
            continue
        print(f"{name:<22}{r['ours_s_per_token']:>11.4f}{r.get('hf_s_per_token', float('nan')):>10.4f}"
              f"{r.get('ours_vs_hf', float('nan')):>9.3f}{r['ours_gbps']:>7.1f}{r['floor_s']:>9.4f}"
              f"{r['verify4_rel']:>8.2f}x{r['verify8_rel']:>8.2f}x")
    if "draft_target_cost_ratio" in results:
        print(f"draft/target cost ratio (ours): {results['draft_target_cost_ratio']:.3f}")
    print(json.dumps(results))
