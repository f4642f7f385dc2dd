"""Offline replay of greedy rounds (bench/replay.py): the same rounds and feedback as the engine."""

import pytest

from specrouter.bench.replay import Trace, record, replay
from specrouter.bench.spec_bench import BenchPrompt
from specrouter.router.fixed import FixedRouter
from specrouter.sampling import SamplingParams
from specrouter.speclen import parse_length_policy

EOS = 9


def cost(level, T):
    return {"d": 0.1, "t": 1.0}[level] + 0.01 * T


def test_replay_rounds_by_hand():
    # drafter agrees at positions 0-2, 4-6 and 8 (the EOS); the target ends on EOS at position 8
    tokens = [1, 2, 3, 4, 5, 6, 7, 8, EOS]
    draft = [1, 2, 3, 0, 5, 6, 7, 0, EOS]
    tr = Trace("q", "c", tokens, draft, [0.1 * i for i in range(9)], [0.01 * i for i in range(9)], "stop")
    seen = []
    router = FixedRouter(("d", "t"), parse_length_policy("fixed:4"))
    router.observe = lambda fb: seen.append((fb.n_drafted, fb.n_accepted, fb.kl))
    r = replay(tr, router, ("d", "t"), cost, max_new_tokens=64, eos_ids=frozenset([EOS]))
    # round 1 at t=0: drafts 4, accepts 3 (mismatch at 3), commits 4; round 2 at t=4: accepts 5,6,7,
    # rejects at 7, commits 4; round 3 at t=8: the EOS is accepted and drafting stops after it (1 draft)
    assert [(d, a) for d, a, _ in seen] == [(4, 3), (4, 3), (1, 1)]
    assert seen[0][2] == pytest.approx([0.0, 0.1, 0.2, 0.3])  # the compared positions: 3 accepted + 1 rejected
    assert seen[2][2] == pytest.approx([0.8])
    assert (r.passes, r.tokens, r.drafted) == (3, 9, 9)
    # drafter: first pass of each round over the tokens it has not seen (1, 1, then 1), verifier k + 1
    expect = (cost("d", 1) + 3 * cost("d", 1) + cost("t", 5)) * 2 + cost("d", 1) + cost("t", 2)
    assert r.seconds == pytest.approx(expect)
    assert r.alone_seconds == pytest.approx(9 * cost("t", 1))


def test_replay_budget_caps_the_draft():
    tokens = list(range(10, 20))
    tr = Trace("q", "c", tokens, list(tokens), [0.0] * 10, [0.0] * 10, "length")
    seen = []
    router = FixedRouter(("d", "t"), parse_length_policy("fixed:8"))
    router.observe = lambda fb: seen.append((fb.n_drafted, fb.n_accepted))
    r = replay(tr, router, ("d", "t"), cost, max_new_tokens=10, eos_ids=frozenset())
    # 9 committed; the budget's last token leaves no room for a draft: the target decodes it alone
    assert seen == [(8, 8)] and r.passes == 2 and r.drafted == 8
    assert r.seconds == pytest.approx(8 * cost("d", 1) + cost("t", 9) + cost("t", 1))


def test_replay_drafter_catches_up_after_a_fully_accepted_round():
    tokens = list(range(10, 30))
    tr = Trace("q", "c", tokens, list(tokens), [0.0] * 20, [0.0] * 20, "length")
    r = replay(tr, FixedRouter(("d", "t"), parse_length_policy("fixed:4")), ("d", "t"), cost, 64, frozenset())
    # every round accepts all 4: the next round's first drafter pass feeds its last draft + the bonus token
    assert r.passes == 4 and r.drafted == 16
    assert r.seconds == pytest.approx(cost("d", 1) + 3 * (cost("d", 2)) + 12 * cost("d", 1) + 4 * cost("t", 5))


@pytest.fixture(scope="module")
def recorded(tiny_dir):
    """A tiny drafter>target chain and greedy traces of it (recorded once for the module)."""
    from specrouter.api import SpecRouter

    chain = f"{tiny_dir / 'draft'}>{tiny_dir / 'target'}"
    texts = ["def fib(n):", "hello hello hello", "the quick brown fox"]
    prompts = [BenchPrompt(str(i), "c", t) for i, t in enumerate(texts)]
    base = SpecRouter.from_chain(chain, dtype="fp32", progress=False, spec_len="fixed:4", max_batch=1)
    return base, prompts, record(base, prompts, MAX_NEW, progress=False)


MAX_NEW = 40


@pytest.mark.parametrize("spec_len", ["fixed:3", "heuristic", "dsde", "entropy:8:0.19:0"])
def test_replay_matches_the_engine(recorded, spec_len):
    from specrouter.api import SpecRouter

    base, prompts, traces = recorded
    max_new = MAX_NEW

    def run(observe_into, replayed):
        sr = SpecRouter(base.models, base.levels, spec_len=spec_len, max_batch=1)
        inner = sr.router.observe
        sr.router.observe = lambda fb: (observe_into.append((fb.n_drafted, fb.n_accepted, fb.kl)), inner(fb))
        if replayed:
            lo, up = sr.levels
            c = lambda lv, T: cost("d" if lv == lo else "t", T)  # noqa: E731
            return [replay(t, sr.router, (lo, up), c, max_new, sr.tokenizer.eos_ids) for t in traces]
        return [sr.generate_ids([sr.encode_prompt(p.text)], SamplingParams(max_new_tokens=max_new))[0]
                for p in prompts]

    fb_engine, fb_replay = [], []
    gens, res = run(fb_engine, False), run(fb_replay, True)
    assert [g.tokens for g in gens] == [t.tokens for t in traces]
    assert [g.stats.steps for g in gens] == [r.passes for r in res]
    assert [x[1] for x in fb_engine] == [x[1] for x in fb_replay]  # accepted, round by round
    # drafted: equal, except where the engine's drafter stopped (on its own EOS, or on the entropy
    # cap) past the first rejected token -- its own text there is not in the trace (replay.py says so)
    for (e_d, acc, _), (r_d, _, _) in zip(fb_engine, fb_replay):
        assert e_d == r_d or acc + 1 <= e_d < r_d
    assert sum(e[0] == r[0] for e, r in zip(fb_engine, fb_replay)) >= 0.8 * len(fb_engine)
    assert sum(g.stats.accepted for g in gens) > 0
    if spec_len != "fixed:3":
        assert len({x[0] for x in fb_engine}) > 1  # the policy did move the length
    for (_, _, a), (_, _, b) in zip(fb_engine, fb_replay):
        assert b == pytest.approx(a, abs=1e-4)  # the KL the policy sees: teacher-forced = engine's


def test_replay_entropy_stop_by_hand():
    from specrouter.speclen import EntropyLength

    tokens = list(range(10, 20))
    ent = [5.0, 0.1, 0.1, 5.0] + [0.1] * 6  # the first draft always stays; the 4th is too uncertain
    tr = Trace("q", "c", tokens, list(tokens), [0.0] * 10, [0.0] * 10, "length", ent)
    seen = []
    router = FixedRouter(("d", "t"), EntropyLength(max_len=8, gamma=1.0, lam=0.0))  # cap 1 nat
    router.observe = lambda fb: seen.append((fb.n_drafted, fb.n_accepted))
    r = replay(tr, router, ("d", "t"), cost, max_new_tokens=10, eos_ids=frozenset())
    assert seen == [(3, 3), (5, 5)] and r.passes == 2  # stop before position 3; then the budget's 5
    no_entropy = Trace("q", "c", tokens, list(tokens), [0.0] * 10, [0.0] * 10, "length")
    with pytest.raises(ValueError, match="no drafter entropies"):
        replay(no_entropy, FixedRouter(("d", "t"), EntropyLength()), ("d", "t"), cost, 10, frozenset())


def test_monotone_costs():
    from specrouter.bench.replay import monotone

    assert monotone([1.0, 3.0, 2.0, 4.0, 3.5, 5.0]) == pytest.approx([1.0, 2.5, 2.5, 3.75, 3.75, 5.0])
    assert monotone([1.0, 2.0, 3.0]) == [1.0, 2.0, 3.0]
    out = monotone([5.0, 1.0, 1.0, 1.0])
    assert out == pytest.approx([2.0] * 4) and sum(out) == pytest.approx(8.0)  # pooled means keep the total


def test_measured_costs_feed_a_profiler(recorded):
    from specrouter.bench.replay import costs_profiler, measure_costs
    from specrouter.router.profiler import T_GRID

    base = recorded[0]
    lo = base.pool[base.levels[0]]
    costs = measure_costs({"d": lo}, t_max=17, ctx=16, repeats=1)
    assert len(costs["d"]) == 18 and all(c > 0 for c in costs["d"][1:])
    assert all(a <= b for a, b in zip(costs["d"][1:], costs["d"][2:]))  # non-decreasing in T
    prof = costs_profiler(costs)
    assert [prof.cost("d", 1, T) for T in T_GRID] == [costs["d"][T] for T in T_GRID]
    with pytest.raises(ValueError, match="stop before T = 16"):
        costs_profiler({"d": costs["d"][:12]})


def overall_tok_per_pass(out: str) -> list[str]:
    """The overall cell's tokens per target pass ("1.23x | 4.56") of each policy row."""
    return [r.split("|")[1].split()[0] for r in out.splitlines() if r.startswith(("fixed:2", "dsde"))]


def test_replay_cli_records_then_reuses_traces(tiny_dir, tmp_path, capsys):
    import json

    from specrouter.cli import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"question_id": i, "category": c, "turns": [t]}) for i, (c, t) in
                                 enumerate([("code", "def fib(n):"), ("chat", "hello hello"), ("code", "x = [1,")])))
    traces = tmp_path / "traces.json"
    argv = ["replay", "--prompts", str(prompts), "--per-category", "2", "--chain",
            f"{tiny_dir / 'draft'}>{tiny_dir / 'target'}", "--spec-len", "fixed:2,dsde:1:4+cost", "--max-new-tokens", "16",
            "--traces", str(traces), "--dtype", "fp32"]
    for bad, why in ((["--chain", "ngram>x"], "a drafter model and the target"),
                     (["--spec-len", "fixed:2,nope"], "unknown speculation-length policy")):
        assert main(argv + bad) == 2  # argparse: the later flag wins
        assert why in capsys.readouterr().err and not traces.exists()
    assert main(argv) == 0
    first = capsys.readouterr()
    assert "recording 3 greedy traces" in first.err and traces.exists()
    header = next(ln for ln in first.out.splitlines() if ln.startswith("policy"))
    assert header.split()[1:] == ["overall", "chat", "code"]  # a cell per category
    assert len(overall_tok_per_pass(first.out)) == 2  # a row per policy
    assert main(argv) == 0
    second = capsys.readouterr()
    assert "reusing 3 traces" in second.err
    # tokens per target pass are a property of the traces and the policy: identical on reuse
    assert overall_tok_per_pass(first.out) == overall_tok_per_pass(second.out)
    assert main(argv[:-4] + ["--max-new-tokens", "12", "--traces", str(traces), "--dtype", "fp32"]) == 0
    assert "recording 3 greedy traces" in capsys.readouterr().err  # other settings: recorded anew
