"""``specrouter tasks fit|eval`` and ``specrouter align``: argument parsing and wiring only.

The work lives in ``fit.py`` (partition, classifier, evaluation) and ``align.py`` (draft alignment);
``specrouter/cli.py`` registers these commands with one call to ``add_parsers``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _threads(n: int | None) -> None:
    import torch

    torch.set_num_threads(n or os.cpu_count() or 1)


def prompt_ids(tokenizer, text: str) -> list[int]:
    """A prompt as the engine sees it from ``bench`` / ``generate``: one user message, chat template."""
    if getattr(tokenizer.hf, "chat_template", None) is not None:
        return tokenizer.chat([{"role": "user", "content": text}])
    return tokenizer.encode(text)


def load_split_prompts(art, prompts_path: str | None, split: str) -> list:
    """The artifact's prompts of ``split`` (train / heldout / all), from its recorded file (checked by hash)."""
    from ..bench.spec_bench import load_prompts
    from .artifact import sha256_file

    path = Path(prompts_path or art.prompts["path"])
    if not path.exists():
        raise FileNotFoundError(f"prompt file {path} does not exist (pass --prompts)")
    if sha256_file(path) != art.prompts["sha256"]:
        raise ValueError(f"{path} is not the prompt file the task artifact was fit on (SHA-256 differs)")
    by_qid = {p.qid: p for p in load_prompts(path)}
    missing = [q for q in art.qids(split) if q not in by_qid]
    if missing:
        raise ValueError(f"{len(missing)} question ids of the artifact are not in {path}: {missing[:5]}")
    return [by_qid[q] for q in art.qids(split)]


def cmd_tasks_fit(a) -> int:
    from ..bench.spec_bench import load_prompts
    from ..model.loader import load_model
    from .artifact import sha256_file
    from .embed import EmbedSpec, PromptEmbedder, common_prefix_len
    from .fit import FitConfig, fit_tasks, parse_k_range

    cfg = FitConfig(k_range=parse_k_range(a.k_range), seed=a.seed, holdout=a.holdout, max_tokens=a.max_tokens)
    if not a.out.endswith(".json"):
        raise ValueError(f"--out must end in .json (the arrays go next to it), got {a.out}")
    prompts = load_prompts(a.prompts)
    _threads(a.threads)
    print(f"[tasks] loading {a.model} ({a.dtype}) for embeddings", file=sys.stderr, flush=True)
    lm = load_model(a.model, dtype=a.dtype)
    ids = [prompt_ids(lm.tokenizer, p.text) for p in prompts]
    pool_from = min(common_prefix_len(ids), min(len(x) for x in ids) - 2)
    if pool_from < 0:
        raise ValueError("a prompt has fewer than 2 tokens; an embedding needs at least 2")
    spec = EmbedSpec(pool_from, cfg.max_tokens)
    emb = PromptEmbedder(lm.model, spec)
    art = fit_tasks(prompts, ids, emb.many,
                    {"model": lm.name, "spec": a.model, "dtype": str(lm.model.dtype).removeprefix("torch."),
                     "pool_from": spec.pool_from, "max_tokens": spec.max_tokens},
                    {"path": str(Path(a.prompts).resolve()), "sha256": sha256_file(a.prompts), "count": len(prompts)},
                    cfg)
    path = art.save(a.out)
    print(f"[tasks] wrote {path} and {path.with_suffix('.safetensors').name}", file=sys.stderr)
    print(f"k = {art.k} (silhouette {art.fit['silhouette'][str(art.k)]:.4f}), "
          f"training purity vs categories {art.fit['train_purity']:.3f}")
    for c in art.clusters:
        mix = ", ".join(f"{k} {v}" for k, v in list(c["categories"].items())[:4])
        print(f"cluster {c['id']}: {c['size']} prompts ({mix}); terms: "
              f"{' '.join(t for t, _ in c['top_terms'][:6])}")
        for ex in c["examples"][:2]:
            print(f"    e.g. {ex}")
    return 0


def cmd_tasks_eval(a) -> int:
    from ..model.loader import load_model
    from .artifact import TaskArtifact
    from .embed import EmbedSpec, PromptEmbedder
    from .fit import evaluate, print_eval

    art = TaskArtifact.load(a.tasks)
    prompts = load_split_prompts(art, a.prompts, "heldout")
    _threads(a.threads)
    dtype = a.dtype or art.embed["dtype"]
    print(f"[tasks] loading {art.embed['spec']} ({dtype}) for embeddings", file=sys.stderr, flush=True)
    lm = load_model(art.embed["spec"], dtype=dtype)
    if lm.name != art.embed["model"]:
        raise ValueError(f"the artifact was fit on embeddings of {art.embed['model']!r}, but "
                         f"{art.embed['spec']!r} loads {lm.name!r}")
    emb = PromptEmbedder(lm.model, EmbedSpec(art.embed["pool_from"], art.embed["max_tokens"]))
    ids = [prompt_ids(lm.tokenizer, p.text) for p in prompts]
    emb(ids[0])  # warm-up: first-call allocations are not per-prompt latency
    rep = evaluate(art, prompts, ids, emb)
    rep["threads"] = __import__("torch").get_num_threads()
    print_eval(rep)
    if a.json:
        Path(a.json).write_text(json.dumps(rep, indent=1))
    print(json.dumps(rep))
    return 0


ALIGN_OPTIONS = (  # flag, type, help; unset flags keep AlignConfig's defaults
    ("--steps", int, "optimizer steps per task"), ("--batch", int, "sequences per step"),
    ("--lr", float, "AdamW learning rate"), ("--rank", int, "LoRA rank"),
    ("--alpha", float, "LoRA alpha; scale = alpha / rank"),
    ("--max-new-tokens", int, "target continuation per prompt"),
    ("--max-prompt-tokens", int, "longer prompts are skipped"),
    ("--topk", int, "target probabilities kept per position"), ("--eval-every", int, "held-out evaluation period"),
    ("--ckpt-every", int, "checkpoint period"), ("--gen-batch", int, "engine batch for target outputs"),
    ("--seed", int, "seed of adapter init, batch draws and prompt samples"),
    ("--layers", int, "adapt only the last N blocks (0: all; the frozen ones run once per sequence)"),
    ("--train-prompts", int, "at most N training prompts per task, a seeded sample (0: all)"),
    ("--heldout-prompts", int, "at most N held-out prompts per task (0: all)"),
    ("--slots", str, "block matmuls that carry the adapter, from qkv,o,gate_up,down (default: all)"),
    ("--prompt-positions", int, "also distil at up to N positions of each training prompt (0: none)"),
    ("--samples", int, "also N continuations per training prompt sampled from the target at T = 1 (0: none)"))


def cmd_align(a) -> int:
    from ..api import SpecRouter, parse_chain
    from ..model.loader import check_same_vocab, load_model
    from ..speculate import NGRAM
    from .align import AlignConfig, align
    from .artifact import TaskArtifact
    from .trainfwd import trainable_base

    given = {f.lstrip("-").replace("-", "_") for f, _, _ in ALIGN_OPTIONS}
    cfg = AlignConfig(**{k: getattr(a, k) for k in given if getattr(a, k) is not None})
    if a.draft == a.target:
        raise ValueError("--draft and --target name the same model")
    art = TaskArtifact.load(a.tasks)
    clusters = [int(x) for x in a.clusters.split(",")] if a.clusters else None
    prompts = {p.qid: p for p in load_split_prompts(art, a.prompts, "all")}
    _threads(a.threads)
    gen_levels = parse_chain(a.gen_chain) if a.gen_chain else [a.draft, a.target]
    if gen_levels[-1] != a.target:
        raise ValueError(f"--gen-chain {a.gen_chain!r} must end with the target {a.target!r}: the training data "
                         f"is the target's own output")
    models = {}
    for spec in (a.draft, a.target, *gen_levels):
        if spec != NGRAM and spec not in models:
            print(f"[align] loading {spec} ({a.dtype})", file=sys.stderr, flush=True)
            models[spec] = load_model(spec, dtype=a.dtype)
    check_same_vocab(list(models.values()))
    draft, target = models[a.draft], models[a.target]
    engine = SpecRouter({x: models[x] for x in gen_levels if x != NGRAM}, gen_levels, max_batch=cfg.gen_batch)
    print(f"[align] fp32 trainable copy of {draft.name}", file=sys.stderr, flush=True)
    base = trainable_base(draft.folder)
    manifest = align(art, a.tasks, prompts, lambda text: prompt_ids(target.tokenizer, text), engine, draft.name,
                     target.name, target.model, base, a.out, cfg, a.resume, clusters)
    print(f"{'task':<6}{'category':<16}{'train':>6}{'held':>6}  {'agreement base -> aligned':<28}"
          f"{'1-TVD base -> aligned'}")
    for t, e in sorted(manifest["tasks"].items(), key=lambda x: int(x[0])):
        ex = e["heldout_exact"]
        if not ex["base"].get("positions"):
            print(f"{t:<6}{e['category']:<16}{e['train_sequences']:>6}{e['heldout_sequences']:>6}  (no held-out data)")
            continue
        print(f"{t:<6}{e['category']:<16}{e['train_sequences']:>6}{e['heldout_sequences']:>6}  "
              f"{ex['base']['agreement']:.3f} -> {ex['aligned']['agreement']:.3f}{'':<14}"
              f"{ex['base']['one_minus_tvd']:.3f} -> {ex['aligned']['one_minus_tvd']:.3f}")
    return 0


def bench_prompts(a) -> list:
    """``bench --tasks``: the artifact's ``--tasks-split`` prompts, then ``--categories`` / ``--per-category``."""
    from .artifact import TaskArtifact

    art = TaskArtifact.load(a.tasks)
    prompts = load_split_prompts(art, a.prompts, a.tasks_split)
    if a.categories:
        keep = set(a.categories.split(","))
        prompts = [p for p in prompts if p.category in keep]
    if a.per_category is not None:
        seen: dict[str, int] = {}
        prompts = [p for p in prompts if (seen.__setitem__(p.category, seen.get(p.category, 0) + 1)
                                          or seen[p.category] <= a.per_category)]
    if not prompts:
        raise ValueError(f"no {a.tasks_split} prompts of {a.tasks} are left after --categories / --per-category")
    return prompts


def add_route_options(parser, bench: bool = False) -> None:
    """``--tasks`` / ``--adapters`` for ``generate`` and ``bench`` (plus ``--tasks-split`` for ``bench``)."""
    parser.add_argument("--tasks", default=None, help="task artifact (`tasks fit`): label requests, route per task")
    parser.add_argument("--adapters", default=None, help="aligned drafts (`align --out DIR`), one per task")
    if bench:
        parser.add_argument("--tasks-split", default="heldout", choices=["heldout", "train", "all"],
                            help="with --tasks: bench only this split of the artifact's prompts (default "
                                 "%(default)s); each chain also runs task-routed, as CHAIN+tasks")


def task_router_kwargs(a) -> dict:
    if a.adapters and not a.tasks:
        raise ValueError("--adapters needs --tasks (the artifact the adapters were aligned on)")
    return {"tasks": a.tasks, "adapters": a.adapters} if a.tasks else {}


def add_parsers(sub, common) -> None:
    """Register ``tasks`` (fit, eval) and ``align`` on the top-level subparsers."""
    t = sub.add_parser("tasks", help="task partition of a prompt set and its online classifier")
    tsub = t.add_subparsers(dest="tasks_cmd", required=True)
    f = tsub.add_parser("fit", help="embed, cluster (k by silhouette) and describe prompts; save an artifact")
    f.add_argument("--prompts", required=True, help="Spec-Bench JSONL with question_id, category, turns")
    f.add_argument("--model", default="0.5b", help="embedding model: the smallest draft of the pool (default 0.5b)")
    f.add_argument("--out", required=True, help="artifact path, .json (arrays go to the .safetensors next to it)")
    f.add_argument("--k-range", default="2:12", help="numbers of clusters tried, LO:HI (default %(default)s)")
    f.add_argument("--seed", type=int, default=0, help="seed of the split and of k-means (default %(default)s)")
    f.add_argument("--holdout", type=float, default=0.25, help="held-out fraction per category")
    f.add_argument("--max-tokens", type=int, default=256, help="prompt tokens pooled per embedding at most")
    common(f)
    f.set_defaults(fn=cmd_tasks_fit)

    e = tsub.add_parser("eval", help="held-out accuracy vs category labels and latency per prompt")
    e.add_argument("--tasks", required=True, help="artifact from `tasks fit`")
    e.add_argument("--prompts", default=None, help="the prompt file (default: the one recorded in the artifact)")
    e.add_argument("--json", default=None, help="also write the report here")
    e.add_argument("--dtype", default=None, help="embedding dtype (default: the one the artifact was fit with)")
    e.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    e.set_defaults(fn=cmd_tasks_eval)

    al = sub.add_parser("align", help="distil the target into one LoRA adapter of the draft per task")
    al.add_argument("--tasks", required=True, help="artifact from `tasks fit`")
    al.add_argument("--draft", required=True, help="the draft to adapt (e.g. 0.5b)")
    al.add_argument("--target", required=True, help="the target it should agree with (e.g. 1.5b)")
    al.add_argument("--out", required=True, help="output folder (manifest, adapters, data, checkpoints)")
    al.add_argument("--prompts", default=None, help="the prompt file (default: the one recorded in the artifact)")
    al.add_argument("--clusters", default=None, help="comma-separated task ids to align (default: all)")
    al.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    al.add_argument("--gen-chain", default=None,
                    help="chain that generates the target's outputs (lossless, so any chain ending at --target; "
                         "default DRAFT>TARGET), e.g. 1.5b@w8a8>1.5b on AVX2 CPUs")
    for flag, typ, help_ in ALIGN_OPTIONS:
        al.add_argument(flag, type=typ, default=None, help=f"{help_} (default: AlignConfig)")
    common(al)
    al.set_defaults(fn=cmd_align)

