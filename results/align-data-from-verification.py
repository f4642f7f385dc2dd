"""Real-model check of make_data's recorded targets: the target's p from its verification passes
(kept while the engine generates) vs a teacher-forced pass over prompt + continuation, which is what
make_data ran before and what it no longer needs. Prints the time of each and their difference."""
import sys, time, torch
torch.set_num_threads(2)
from specrouter.api import SpecRouter
from specrouter.bench.spec_bench import load_prompts
from specrouter.tasks.data import make_data, sampled_data, target_logits
from specrouter.tasks.distill import topk_targets

cats = sys.argv[1].split(",") if len(sys.argv) > 1 else ["writing", "math", "translation", "qa"]
n_samples = int(sys.argv[2]) if len(sys.argv) > 2 else 0  # > 0: check sampled_data (T = 1) instead
sr = SpecRouter.from_chain("1.5b@w8a8>1.5b", dtype="fp32", progress=False, spec_len="fixed:8", max_batch=1)
target = sr.engine.target.model
vocab = target.args.vocab_size
ids = [sr.encode_prompt(p.text) for p in load_prompts("../shared/bench/spec_bench_question.jsonl", cats, 1)]
t0 = time.perf_counter()
seqs, _ = make_data(sr, ids, 128 if not n_samples else 1, 2048, 64, 1, vocab, "check")
if n_samples:  # the sampled continuations' p are the rejection sampler's, at T = 1
    t0 = time.perf_counter()
    seqs = sampled_data(sr, seqs, n_samples, 128, 64, 1, vocab, "check", "check samples")
t_gen = time.perf_counter() - t0
t_tf, top1, dmax, n = 0.0, 0, 0.0, 0
for s in seqs:
    t1 = time.perf_counter()
    idx, p = topk_targets(target_logits(target, s.ids, s.positions, vocab), 64)
    t_tf += time.perf_counter() - t1
    top1 += int((idx[:, 0] == s.idx[:, 0]).sum())
    dmax = max(dmax, float((p - s.p).abs().max()))
    n += len(s.positions)
print(f"{len(seqs)} sequences, {n} continuation positions, prompts {[s.n_prompt for s in seqs]} tokens")
print(f"generation with recorded p: {t_gen:.1f} s; teacher-forced pass it replaces: {t_tf:.1f} s "
      f"({t_tf / t_gen:.0%} of generation)")
print(f"top-1 equal at {top1}/{n} positions; max |p_recorded - p_teacher_forced| over top-64 = {dmax:.2e}")
