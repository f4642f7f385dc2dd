"""The command line, end to end on tiny model folders."""

import json

import torch

from specrouter.cli import main


def test_generate_streams_and_reports(tiny_dir, capsys):
    chain = f"{tiny_dir / 'draft'}>{tiny_dir / 'target'}"
    assert main(["generate", "hello world", "--chain", chain, "--dtype", "fp32", "--max-new-tokens", "20",
                 "--spec-len", "fixed:3", "--threads", "1"]) == 0
    out, err = capsys.readouterr()
    assert "tok/s" in err and "acceptance" in err and "mean accepted length" in err
    assert len(out.strip()) > 0


def test_generate_bad_input_exits_2_with_a_message(tiny_dir, capsys):
    assert main(["generate", "x", "--chain", str(tiny_dir / "missing"), "--threads", "1"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["generate", "x", "--chain", str(tiny_dir / "target"), "--temperature", "-1", "--threads", "1"]) == 2
    assert "temperature" in capsys.readouterr().err


def test_bench_prints_table_and_json(tiny_dir, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    rows = [{"question_id": i, "category": c, "turns": [t]} for i, (c, t) in enumerate(
        [("coding", "def add(a, b):"), ("coding", "print hello"), ("chat", "hi there"), ("chat", "how are you")])]
    prompts.write_text("\n".join(json.dumps(r) for r in rows))
    pool = f"ngram>{tiny_dir / 'draft'}>{tiny_dir / 'target'}"
    assert main(["bench", "--prompts", str(prompts), "--per-category", "2", "--max-new-tokens", "16",
                 "--chains", f"auto,{tiny_dir / 'draft'}>{tiny_dir / 'target'}", "--pool", pool,
                 "--dtype", "fp32", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result["categories"]) == {"coding", "chat"}
    for key in ("speedup_vs_target", "speedup_vs_hf", "greedy_match", "mean_accepted", "tokens_per_s"):
        assert key in result["overall"]
    assert result["overall"]["greedy_match"] == 1.0  # every prompt equals target-exact
    sysd = result["systems"]
    assert sysd["target-exact"]["overall"]["greedy_match"] == 1.0  # the reference matches itself
    # speedups divide the one-token-pass target, the fastest target-alone run
    assert sysd["target"]["overall"]["speedup_vs_target"] == 1.0
    assert "hf_assisted" in sysd and "auto" in result["routers"]
    assert "chain choice per category" in out


def test_bench_ignore_eos_times_full_length_responses(tiny_dir, tmp_path, capsys, monkeypatch):
    """--ignore-eos: every system, HF assisted included, returns exactly --max-new-tokens even where the
    target's answer ends early (made so here: its 3rd greedy token is declared EOS)."""
    from specrouter import tokenizer as tk
    from specrouter.api import SpecRouter
    from specrouter.sampling import SamplingParams

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"question_id": 1, "category": "chat", "turns": ["hi there"]}) + "\n")
    sr = SpecRouter.from_chain(str(tiny_dir / "target"), dtype="fp32", progress=False)
    ref = sr.generate_ids([sr.encode_prompt("hi there")], SamplingParams(max_new_tokens=12, ignore_eos=True))[0].tokens
    eos = ref[2]
    init = tk.Tokenizer.__init__

    def with_eos(self, *args, **kw):
        init(self, *args, **kw)
        self.eos_ids = frozenset([eos])

    monkeypatch.setattr(tk.Tokenizer, "__init__", with_eos)
    chain = f"{tiny_dir / 'draft'}>{tiny_dir / 'target'}"
    lengths = []
    for flags in ([], ["--ignore-eos"]):
        rows = tmp_path / f"rows{len(flags)}.json"
        assert main(["bench", "--prompts", str(prompts), "--max-new-tokens", "12", "--chains", chain, "--dtype",
                     "fp32", "--threads", "1", "--out", str(rows), *flags]) == 0
        capsys.readouterr()
        row = json.loads(rows.read_text())["rows"][0]
        lengths.append({s: row[s]["tokens"] for s in ("target", chain, "hf_assisted")})
    assert lengths[0] == {"target": ref.index(eos) + 1, chain: ref.index(eos) + 1, "hf_assisted": ref.index(eos) + 1}
    assert lengths[1] == {"target": 12, chain: 12, "hf_assisted": 12}


def test_bench_report_without_hf_prints_no_ratio(capsys):
    from specrouter.bench.spec_bench import print_report

    agg = {s: {"tokens_per_s": 2.0, "speedup_vs_target": 1.0, "mean_accepted": 0.0, "greedy_match": 1.0}
           for s in ("target", "a>b")}
    agg["a>b"]["speedup_vs_hf"] = float("nan")
    print_report({"chat": agg}, agg, "a>b")
    table = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(("chat", "OVERALL"))]
    assert len(table) == 4 and not any("nan" in ln for ln in table)
    assert all(ln.split()[4] == "-" for ln in table)  # the vs-HF column


def test_bench_rejects_malformed_jsonl(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1, "turns": ["no category"]}\n')
    assert main(["bench", "--prompts", str(bad), "--chains", "x", "--threads", "1"]) == 2
    assert "Spec-Bench record" in capsys.readouterr().err


def test_bench_samples_with_shared_seeds(tiny_dir, tmp_path, capsys):
    """--temperature samples every system (HF assisted included) with per-prompt seeds; a second run
    with the same --seed reproduces our systems' outputs, so the tables compare like with like."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"question_id": i, "category": "chat", "turns": [t]})
                                 for i, t in enumerate(["hi there", "tell me a story"])))
    out_rows = []
    for run in range(2):
        rows = tmp_path / f"rows{run}.json"
        assert main(["bench", "--prompts", str(prompts), "--max-new-tokens", "12", "--temperature", "1.0",
                     "--seed", "7", "--chains", f"{tiny_dir / 'draft'}>{tiny_dir / 'target'}", "--dtype", "fp32",
                     "--threads", "1", "--out", str(rows)]) == 0
        capsys.readouterr()
        out_rows.append(json.loads(rows.read_text())["rows"])
    assert out_rows[0][0]["hf_assisted"]["tokens"] > 0
    chain = f"{tiny_dir / 'draft'}>{tiny_dir / 'target'}"
    for system in ("target", chain):
        assert [r[system]["digest"] for r in out_rows[0]] == [r[system]["digest"] for r in out_rows[1]]
    assert len({r["target"]["digest"] for r in out_rows[0]}) == 2
    assert main(["bench", "--prompts", str(prompts), "--temperature", "-0.5", "--chains", str(tiny_dir / "target"),
                 "--threads", "1"]) == 2
    assert "temperature" in capsys.readouterr().err


def test_cli_and_api_agree_on_the_default_pool():
    from specrouter import api, cli

    assert cli.DEFAULT_POOL == api.DEFAULT_POOL  # cli keeps its own copy so --help does not import torch
    assert cli.DEFAULT_POOL_FP32 == api.DEFAULT_POOL_FP32
    # the pool follows the target's compute dtype: w8a8 is a CPU kernel for fp32 activations
    assert api.default_pool("cpu", "fp32") == api.DEFAULT_POOL_FP32
    assert api.default_pool("cpu", "bf16") == api.DEFAULT_POOL
    assert api.default_pool("cuda", "fp32") == api.DEFAULT_POOL
    assert api.default_pool("cpu", "auto") == (api.DEFAULT_POOL if api.parse_dtype("auto") == torch.bfloat16
                                                else api.DEFAULT_POOL_FP32)
