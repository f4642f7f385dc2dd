"""``specrouter`` command line: generate, pull, bench, bench-runtime (and serve when installed)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

DEFAULT_CHAIN = "0.5b>1.5b"


def _threads(n: int | None) -> None:
    import torch

    torch.set_num_threads(n or os.cpu_count() or 1)


def _sampling(a):
    from .sampling import SamplingParams

    return SamplingParams(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                          max_new_tokens=a.max_new_tokens, seed=a.seed, stop=tuple(a.stop or ()))


def cmd_pull(a) -> int:
    from .model.loader import resolve
    from .model.registry import DEFAULT_MODELS

    names = a.models or [m.name for m in DEFAULT_MODELS]
    for n in names:
        name, folder = resolve(n)
        print(f"{name}: ready at {folder}")
    return 0


def cmd_generate(a) -> int:
    from .api import SpecRouter
    from .tokenizer import StreamDecoder

    _threads(a.threads)
    params = _sampling(a)  # validate before loading anything
    sr = SpecRouter.from_chain(a.chain, dtype=a.dtype, spec_len=a.spec_len)
    prompt = [{"role": "user", "content": a.prompt}] if not a.raw else a.prompt
    ids = sr.encode_prompt(prompt, chat=not a.raw)
    dec = StreamDecoder(sr.tokenizer)
    emitted = []

    def on_tokens(_, new):
        text = dec.push(new)
        emitted.append(text)
        sys.stdout.write(text)
        sys.stdout.flush()

    t0 = time.perf_counter()
    gen = sr.generate_ids([ids], params, on_tokens=on_tokens)[0]
    dt = time.perf_counter() - t0
    print()
    st = gen.stats
    print(f"[{len(gen.tokens)} tokens in {dt:.2f}s: {len(gen.tokens) / dt:.2f} tok/s "
          f"(prefill {st.prefill_s:.2f}s) | chain {a.chain} | acceptance {st.acceptance_rate:.2f} | "
          f"mean accepted length {st.mean_accepted_length(len(gen.tokens)):.2f} | finish {gen.finish_reason}]",
          file=sys.stderr)
    return 0


def cmd_bench(a) -> int:
    import torch

    from .api import SpecRouter, parse_chain
    from .bench.spec_bench import HFAssisted, load_prompts, print_report, run_bench, summarize
    from .model.loader import load_model, parse_dtype

    _threads(a.threads)
    prompts = load_prompts(a.prompts, a.categories.split(",") if a.categories else None, a.per_category)
    chains = [c.strip() for c in a.chains.split(",")]
    policies = [p.strip() for p in a.spec_len.split(",")]
    levels_all = [parse_chain(c) for c in chains]
    target_name = levels_all[0][-1]
    if any(lv[-1] != target_name for lv in levels_all):
        raise ValueError("every chain in one bench run must end at the same target")
    models = {}
    for lv in levels_all:
        for name in lv:
            if name != "ngram" and name not in models:
                print(f"[bench] loading {name} ({a.dtype})", file=sys.stderr, flush=True)
                models[name] = load_model(name, dtype=a.dtype)
    target_only = SpecRouter(models, [target_name])
    systems = {"target": _runner(target_only)}
    for chain, lv in zip(chains, levels_all):
        if len(lv) == 1:
            continue
        for pol in policies:
            name = chain if len(policies) == 1 else f"{chain} [{pol}]"
            systems[name] = _runner(SpecRouter(models, lv, spec_len=pol))
    hf = None
    if not a.no_hf:
        draft_name = next((x for lv in levels_all for x in lv[:-1] if x != "ngram"), None)
        if draft_name is None:
            print("[bench] no model drafter in the chains: skipping HF assisted generation", file=sys.stderr)
        else:
            print(f"[bench] loading transformers models for assisted generation", file=sys.stderr, flush=True)
            hf = HFAssisted(models[target_name].folder, models[draft_name].folder, parse_dtype(a.dtype))
    print(f"[bench] {len(prompts)} prompts x {len(systems) + (hf is not None)} systems, "
          f"{a.max_new_tokens} new tokens, batch {a.batch_size}", file=sys.stderr, flush=True)
    rows = run_bench(prompts, systems, target_only.tokenizer, a.max_new_tokens, hf, target_only.tokenizer.eos_ids,
                     a.batch_size)
    per_cat, overall = summarize(rows)
    primary = next((s for s in overall if s not in ("target", "hf_assisted")), "target")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"rows": rows, "args": vars(a)}, f)
    print_report(per_cat, overall, primary)
    del torch
    return 0


def _runner(sr):
    from .sampling import SamplingParams

    def run(ids: list[list[int]], max_new: int):
        gens = sr.generate_ids(ids, SamplingParams(max_new_tokens=max_new))
        return [(g.tokens, g.stats.steps) for g in gens]
    return run


def cmd_bench_runtime(a) -> int:
    from .bench.runtime import print_table, run

    _threads(a.threads)
    print_table(run(a.models, a.dtype, a.prompt_len, a.tokens, a.gbps, with_hf=not a.no_hf))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="specrouter", description="Lossless speculative decoding over chains of models")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--dtype", default="auto", help="auto (bf16 where native), bf16, fp32, fp16")
        sp.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")

    g = sub.add_parser("generate", help="generate text for one prompt, streaming")
    g.add_argument("prompt")
    g.add_argument("--chain", default=DEFAULT_CHAIN, help="levels joined by '>', target last (default %(default)s)")
    g.add_argument("--raw", action="store_true", help="send the prompt as-is, without the chat template")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--spec-len", default="heuristic", help="fixed:K or heuristic")
    common(g)
    g.set_defaults(fn=cmd_generate)

    pl = sub.add_parser("pull", help="download, assemble and verify default models")
    pl.add_argument("models", nargs="*", help="default model names (all when omitted)")
    pl.set_defaults(fn=cmd_pull)

    b = sub.add_parser("bench", help="Spec-Bench-format speed benchmark (one process, interleaved)")
    b.add_argument("--prompts", required=True, help="JSONL with question_id, category, turns")
    b.add_argument("--categories", default=None, help="comma-separated subset")
    b.add_argument("--per-category", type=int, default=None)
    b.add_argument("--max-new-tokens", type=int, default=128)
    b.add_argument("--batch-size", type=int, default=1)
    b.add_argument("--chains", "--chain", default=DEFAULT_CHAIN, help="comma-separated chains, same target")
    b.add_argument("--spec-len", default="heuristic", help="comma-separated length policies")
    b.add_argument("--no-hf", action="store_true", help="skip transformers' assisted generation")
    b.add_argument("--out", default=None, help="write per-prompt rows as JSON")
    common(b)
    b.set_defaults(fn=cmd_bench)

    r = sub.add_parser("bench-runtime", help="decode speed of our runtime vs transformers, same weights")
    r.add_argument("models", nargs="*", default=["0.5b", "1.5b"])
    r.add_argument("--prompt-len", type=int, default=64)
    r.add_argument("--tokens", type=int, default=32)
    r.add_argument("--gbps", type=float, default=17.0, help="memory bandwidth assumed for the floor")
    r.add_argument("--no-hf", action="store_true")
    common(r)
    r.set_defaults(fn=cmd_bench_runtime)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, NotImplementedError) as e:
        print(f"specrouter: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
