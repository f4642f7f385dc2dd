"""``specrouter`` command line: generate, pull, bench, bench-runtime, quant-eval, serve, bench-load."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

DEFAULT_CHAIN = "auto"
DEFAULT_POOL = "ngram>0.5b@int4>1.5b"  # copies of api's, so that --help does not import torch
DEFAULT_POOL_FP32 = "ngram>0.5b@w8a8>1.5b@w8a8>1.5b"
POOL_HELP = (f"levels the 'auto' router chooses from (default: {DEFAULT_POOL} where the target runs in bf16, "
             f"{DEFAULT_POOL_FP32} on CPUs without native bf16)")
QUANT_HELP = ("default precision of chain levels without an @suffix: dense, int8, int4, int4-g32, w8a8 "
              "[-head=dense|int8|int4|w8a8] [-vocab=N: a draft head over the N lowest ids + specials] "
              "(per level: 1.5b@int4>1.5b, 0.5b@int4-vocab=48k>1.5b)")


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
    from .tasks.cli import task_router_kwargs

    tkw = task_router_kwargs(a)  # --tasks / --adapters: task-routed drafts (specrouter/tasks)
    router_cls = SpecRouter
    if tkw:
        from .tasks.pool import TaskSpecRouter as router_cls
    sr = router_cls.from_chain(a.chain, dtype=a.dtype, spec_len=a.spec_len, quant=a.quant, pool=a.pool,
                               max_batch=1, **tkw)
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
    used = sorted(st.chains.items(), key=lambda kv: -kv[1])
    # auto and task-routed requests run chains other than the one named: say which, by steps
    steps = "" if [c for c, _ in used] in ([a.chain], []) else \
        " (steps: " + ", ".join(f"{c} {n}" for c, n in used) + ")"
    print(f"[{len(gen.tokens)} tokens in {dt:.2f}s: {len(gen.tokens) / dt:.2f} tok/s "
          f"(prefill {st.prefill_s:.2f}s) | chain {a.chain}{steps} | acceptance {st.acceptance_rate:.2f} | "
          f"mean accepted length {st.mean_accepted_length(len(gen.tokens)):.2f} | finish {gen.finish_reason}]",
          file=sys.stderr)
    return 0


BASELINES = ("target", "target-exact", "hf_assisted")  # bench systems that are not ours to headline


def cmd_bench(a) -> int:
    import torch

    from .api import SpecRouter, default_pool, parse_chain
    from .bench.spec_bench import HFAssisted, load_prompts, print_report, run_bench, summarize
    from .model.loader import load_model, parse_dtype

    _threads(a.threads)
    a.pool = a.pool or default_pool("cpu", a.dtype)
    prompts = load_prompts(a.prompts, a.categories.split(",") if a.categories else None, a.per_category)
    from .tasks.cli import bench_prompts, task_router_kwargs

    tkw = task_router_kwargs(a)  # --tasks: the artifact's held-out prompts; every chain also task-routed
    if tkw:
        prompts = bench_prompts(a)
    chains = [c.strip() for c in a.chains.split(",")]
    policies = [p.strip() for p in a.spec_len.split(",")]
    # "auto" is the adaptive router over --pool; its levels are the pool's
    levels_all = [parse_chain(a.pool if c == "auto" else c) for c in chains]
    target_name = levels_all[0][-1]
    if any(lv[-1] != target_name for lv in levels_all):
        raise ValueError("every chain in one bench run must end at the same target")
    models = {}
    for lv in levels_all:
        for name in lv:
            if name != "ngram" and name not in models:
                print(f"[bench] loading {name} ({a.dtype})", file=sys.stderr, flush=True)
                models[name] = load_model(name, dtype=a.dtype, quant=a.quant)
    target_only = SpecRouter(models, [target_name], max_batch=a.batch_size)
    if not 0.0 <= a.temperature <= 100.0:
        raise ValueError(f"--temperature must be in [0, 100], got {a.temperature}")
    # "target": one-token passes, the fastest way to run the target alone (every speedup divides
    # it); "target-exact": the engine's exact target passes (>= 2 tokens wide), whose output every
    # greedy match is checked against (spec_bench.py)
    systems = {"target": _runner(SpecRouter(models, [target_name], max_batch=a.batch_size, exact=False),
                                 a.temperature, a.seed, a.ignore_eos),
               "target-exact": _runner(target_only, a.temperature, a.seed, a.ignore_eos)}
    routers = {}
    for chain, lv in zip(chains, levels_all):
        if len(lv) == 1:
            continue
        for pol in policies:
            name = chain if len(policies) == 1 else f"{chain} [{pol}]"
            auto = chain == "auto"
            base = pol.removesuffix("+nocap")
            spec = (None if auto else "heuristic") if base == "auto" else base
            sr = SpecRouter(models, lv, spec_len=spec, auto=auto, batch_cap=not pol.endswith("+nocap"),
                            max_batch=a.batch_size, progress=True)
            systems[name] = _runner(sr, a.temperature, a.seed, a.ignore_eos)
            if auto:
                routers[name] = sr.router
            if tkw:
                from .tasks.pool import TaskSpecRouter

                tsr = TaskSpecRouter(models, lv, spec_len=spec, auto=auto, batch_cap=not pol.endswith("+nocap"),
                                     max_batch=a.batch_size, progress=True, **tkw)
                systems[f"{name}+tasks"] = _runner(tsr, a.temperature, a.seed, a.ignore_eos)
                if auto:
                    routers[f"{name}+tasks"] = tsr.router
    if a.llamacpp:
        from .bench.llamacpp import LlamaCppBaseline, LlamaCppUnavailable, target_gguf

        try:
            gguf = target_gguf(target_name)
            print(f"[bench] loading llama.cpp on {gguf.name} ({torch.get_num_threads()} threads)",
                  file=sys.stderr, flush=True)
            systems["llama.cpp"] = LlamaCppBaseline(gguf, n_threads=torch.get_num_threads(),
                                                    eos_ids=() if a.ignore_eos else target_only.tokenizer.eos_ids)
        except LlamaCppUnavailable as e:
            print(f"[bench] skipping the llama.cpp baseline: {e}", file=sys.stderr, flush=True)
    hf = None
    if not a.no_hf:
        draft_name = next((x for lv in levels_all for x in lv[:-1] if x != "ngram"), None)
        if draft_name is None:
            print("[bench] no model drafter in the chains: skipping HF assisted generation", file=sys.stderr)
        else:
            print(f"[bench] loading transformers models for assisted generation", file=sys.stderr, flush=True)
            hf = HFAssisted(models[target_name].folder, models[draft_name].folder, parse_dtype(a.dtype),
                            temperature=a.temperature, seed=a.seed, ignore_eos=a.ignore_eos)
    print(f"[bench] {len(prompts)} prompts x {len(systems) + (hf is not None)} systems, "
          f"{a.max_new_tokens} new tokens, batch {a.batch_size}", file=sys.stderr, flush=True)
    def save(rows):
        if a.out:
            with open(a.out, "w") as f:
                json.dump({"rows": rows, "args": {k: v for k, v in vars(a).items() if k != "fn"}}, f)

    rows = run_bench(prompts, systems, target_only.tokenizer, a.max_new_tokens, hf, target_only.tokenizer.eos_ids,
                     a.batch_size, on_rows=save)
    per_cat, overall = summarize(rows)
    primary = next((s for s in overall if s not in BASELINES), "target")
    print_report(per_cat, overall, primary, extra=_router_report(rows, routers))
    del torch
    return 0


def cmd_bench_report(a) -> int:
    """Re-print a bench's tables from its saved rows (``bench --out``), complete or interrupted."""
    from .bench.spec_bench import print_report, summarize

    with open(a.rows) as f:
        rows = json.load(f)["rows"]
    if not rows:
        raise ValueError(f"{a.rows} holds no measured prompts")
    per_cat, overall = summarize(rows)
    primary = a.primary or next((s for s in overall if s not in BASELINES), "target")
    print(f"[bench-report] {len(rows)} prompts")
    print_report(per_cat, overall, primary)
    return 0


def _runner(sr, temperature: float = 0.0, seed: int = 0, ignore_eos: bool = False):
    """A bench system: greedy, or sampled with one seed per call shared by every system; with
    ``ignore_eos`` every response is exactly ``max_new`` tokens long."""
    from .sampling import SamplingParams

    calls = iter(range(seed, 1 << 62))

    def run(ids: list[list[int]], max_new: int):
        s = next(calls)
        kw = {"max_new_tokens": max_new, "ignore_eos": ignore_eos}
        plist = [SamplingParams(temperature=temperature, seed=s * 1000 + j, **kw)
                 for j in range(len(ids))] if temperature > 0 else SamplingParams(**kw)
        gens = sr.generate_ids(ids, plist)
        return [(g.tokens, g.stats.steps, dict(g.stats.chains)) for g in gens]
    return run


def _router_report(rows: list[dict], routers: dict) -> dict:
    """How often each adaptive system chose each chain, per category; latency-model accuracy."""
    import statistics
    from collections import defaultdict

    out = {}
    for name, router in routers.items():
        use: dict = defaultdict(lambda: defaultdict(int))
        for r in rows:
            for chain, n in r[name].get("chains", {}).items():
                use[r["category"]][chain] += n
        share = {c: {ch: n / sum(d.values()) for ch, n in d.items()} for c, d in use.items()}
        acc = router.accuracy()
        errs = [abs(p - r) / r for p, r in acc]
        out[name] = {"chain_share": share, "latency_segments": len(acc),
                     "latency_median_abs_error": statistics.median(errs) if errs else None}
        print(f"\n[{name}] chain choice per category (share of steps):")
        for c, d in share.items():
            print(f"  {c:<16}" + "  ".join(f"{ch} {v:.0%}" for ch, v in sorted(d.items(), key=lambda x: -x[1])))
        if errs:
            print(f"[{name}] latency model: median |predicted - realized| / realized = "
                  f"{statistics.median(errs):.1%} over {len(acc)} (request, chain) runs of >= 4 steps")
    return out


def cmd_bench_runtime(a) -> int:
    from .bench.runtime import print_table, run

    _threads(a.threads)
    quants = tuple(q.strip() for q in a.quant.split(","))
    print_table(run(a.models, a.dtype, a.prompt_len, a.tokens, a.gbps, with_hf=not a.no_hf, quants=quants,
                    rounds=a.rounds))
    return 0


def cmd_quant_eval(a) -> int:
    from .bench.quant_eval import print_report, run
    from .bench.spec_bench import load_prompts

    _threads(a.threads)
    prompts = load_prompts(a.prompts, a.categories.split(",") if a.categories else None, a.per_category)
    quants = [q.strip() for q in a.quant.split(",")]
    print_report(run(a.models, quants, prompts, a.dtype, a.new_tokens, a.max_prompt_tokens))
    return 0


def cmd_serve(a) -> int:
    try:
        from .server.app import serve
        from .server.config import ServerConfig
    except ImportError as e:
        raise ValueError(f"serve needs the server extras ({e.name} is missing): pip install 'specrouter[serve]'") from None

    cfg = ServerConfig(model_name=a.model_name or a.chain, host=a.host, port=a.port, max_queue=a.max_queue,
                       api_key=a.api_key or os.environ.get("SPECROUTER_API_KEY") or None,
                       default_max_tokens=a.default_max_tokens)  # validate before loading anything
    if a.max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {a.max_batch}")
    _threads(a.threads)
    from .api import SpecRouter

    sr = SpecRouter.from_chain(a.chain, dtype=a.dtype, spec_len=a.spec_len, quant=a.quant, pool=a.pool,
                               max_batch=a.max_batch, max_seq_len=a.max_seq_len, batch_cap=not a.no_batch_cap)
    serve(sr, cfg, log_level=a.log_level, access_log=not a.no_access_log)
    return 0


def cmd_bench_load(a) -> int:
    from .bench.load import run_from_args

    return run_from_args(a)


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
    g.add_argument("--pool", default=None, help=POOL_HELP)
    g.add_argument("--spec-len", default=None,
                   help="top draft length policy: fixed:K, heuristic (default for a fixed chain), entropy, dsde, "
                        "dsde+cost (dsde within the profiled cost band), costmodel; under --chain auto the "
                        "router's cost model decides unless this is given")
    g.add_argument("--quant", default="dense", help=QUANT_HELP)
    from .bench.replay import add_parser as add_replay_parser
    from .tasks.cli import add_parsers as add_task_parsers, add_route_options

    add_route_options(g)
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
    b.add_argument("--chains", "--chain", default=DEFAULT_CHAIN,
                   help="comma-separated chains with the same target; 'auto' = adaptive router over --pool")
    b.add_argument("--pool", default=None, help=POOL_HELP)
    b.add_argument("--spec-len", default="auto",
                   help="comma-separated length policies: fixed:K, heuristic, entropy, dsde, dsde+cost, costmodel; "
                        "'auto' = heuristic for fixed chains, the router's cost model for 'auto'; a '+nocap' "
                        "suffix turns off the batch cap")
    b.add_argument("--temperature", type=float, default=0.0,
                   help="0 = greedy (default); > 0 samples every system with the same per-prompt seeds "
                        "(the 'match' column then compares samples, not a correctness check)")
    b.add_argument("--seed", type=int, default=0, help="base seed of the per-prompt sampling seeds")
    b.add_argument("--ignore-eos", action="store_true",
                   help="every system generates exactly --max-new-tokens (EOS ends nothing), so systems whose "
                        "sampled answers differ in length still time equal work; HF assisted suppresses EOS "
                        "instead (transformers' min_new_tokens)")
    b.add_argument("--no-hf", action="store_true", help="skip transformers' assisted generation")
    b.add_argument("--llamacpp", action="store_true",
                   help="add llama.cpp decoding the target's GGUF (needs: pip install 'specrouter[llamacpp]')")
    b.add_argument("--quant", default="dense", help=QUANT_HELP)
    b.add_argument("--out", default=None, help="write per-prompt rows as JSON")
    add_route_options(b, bench=True)
    common(b)
    b.set_defaults(fn=cmd_bench)

    br = sub.add_parser("bench-report", help="tables of a saved bench run (bench --out FILE)")
    br.add_argument("rows")
    br.add_argument("--primary", default=None, help="system whose numbers head the JSON line")
    br.set_defaults(fn=cmd_bench_report)

    r = sub.add_parser("bench-runtime", help="decode speed of our runtime vs transformers, same weights")
    r.add_argument("models", nargs="*", default=["0.5b", "1.5b"])
    r.add_argument("--prompt-len", type=int, default=64)
    r.add_argument("--tokens", type=int, default=32)
    r.add_argument("--gbps", type=float, default=17.0, help="memory bandwidth assumed for the floor")
    r.add_argument("--no-hf", action="store_true")
    r.add_argument("--quant", default="dense",
                   help="comma-separated precisions timed side by side, e.g. dense,int8,int4 (default %(default)s)")
    r.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per variant")
    common(r)
    r.set_defaults(fn=cmd_bench_runtime)

    qe = sub.add_parser("quant-eval", help="greedy agreement, 1-TVD and perplexity drift of quantized copies")
    qe.add_argument("models", nargs="*", default=["0.5b", "1.5b"])
    qe.add_argument("--prompts", required=True, help="Spec-Bench JSONL with question_id, category, turns")
    qe.add_argument("--quant", default="int8,int4", help="comma-separated schemes compared with each model")
    qe.add_argument("--categories", default=None, help="comma-separated subset")
    qe.add_argument("--per-category", type=int, default=1)
    qe.add_argument("--new-tokens", type=int, default=48, help="greedy continuation scored per prompt")
    qe.add_argument("--max-prompt-tokens", type=int, default=512, help="skip longer prompts")
    common(qe)
    qe.set_defaults(fn=cmd_quant_eval)

    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server (continuous batching)")
    s.add_argument("--chain", default=DEFAULT_CHAIN, help="levels joined by '>', target last (default %(default)s)")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default loopback: %(default)s)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-batch", type=int, default=8, help="rows decoded together (default %(default)s)")
    s.add_argument("--max-queue", type=int, default=64,
                   help="requests waiting for a row before new ones get HTTP 429 (default %(default)s)")
    s.add_argument("--max-seq-len", type=int, default=4096, help="context per row, prompt + output")
    s.add_argument("--pool", default=None, help=POOL_HELP)
    s.add_argument("--quant", default="dense", help=QUANT_HELP)
    s.add_argument("--spec-len", default=None,
                   help="fixed:K, heuristic, entropy, dsde, dsde+cost or costmodel (default: the chain's own policy)")
    s.add_argument("--no-batch-cap", action="store_true",
                   help="let each row draft its own length regardless of the batch; with a fixed chain this makes "
                        "seeded sampling reproducible under any concurrent load")
    s.add_argument("--model-name", default=None, help="model id clients send (default: the chain)")
    s.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $SPECROUTER_API_KEY, else none)")
    s.add_argument("--default-max-tokens", type=int, default=256, help="max_tokens when a request omits it")
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    s.add_argument("--no-access-log", action="store_true")
    common(s)
    s.set_defaults(fn=cmd_serve)

    bl = sub.add_parser("bench-load", help="bounded load test of a server on loopback (streaming clients)")
    from .bench.load import add_arguments

    add_arguments(bl)
    bl.set_defaults(fn=cmd_bench_load)
    add_task_parsers(sub, common)  # tasks fit|eval, align
    add_replay_parser(sub)  # replay: length policies scored on recorded greedy traces
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
