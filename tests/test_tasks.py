"""Task-aware heterogeneous drafts: clustering and classifier on constructed data, the artifact, LoRA
adapters (zero-init identity, switching without reload), the alignment loop on a tiny pair, and
lossless decoding with task-routed drafts."""

import copy
import json

import numpy as np
import pytest
import torch
from tiny import byte_tokenizer, save_folder

from specrouter.api import SpecRouter
from specrouter.bench.spec_bench import BenchPrompt
from specrouter.cli import main
from specrouter.model.loader import load_model
from specrouter.sampling import SamplingParams
from specrouter.tasks.align import AlignConfig, Sequence, eval_coarse, load_adapters, sample_prompts
from specrouter.tasks.data import attach_prompt_targets, shared_prefix, target_logits
from specrouter.tasks.artifact import TaskArtifact, arrays_path
from specrouter.tasks.classifier import TaskClassifier, features, standardizer
from specrouter.tasks.distill import coarse_kl, topk_targets
from specrouter.tasks.fit import FitConfig, fit_tasks, purity, split_by_category
from specrouter.tasks.kmeans import choose_k, kmeans, silhouette
from specrouter.tasks.lora import Adapter, LoRALinear, adapted, lora_parameters
from specrouter.tasks.pool import TaskSpecRouter
from specrouter.tasks.trainfwd import hidden_before, train_logits, trainable_base


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: these tiny models only lose to thread sync, badly so on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------- constructed data
def blobs(k: int, n: int, d: int, seed: int, sep: float = 6.0):
    """k Gaussian blobs (unit spread) around seeded centres; returns (centres, sampler(n, seed))."""
    centres = np.random.default_rng(seed).normal(0, sep, (k, d))

    def sample(n_per: int, s: int):
        rng = np.random.default_rng(s)
        X = np.concatenate([c + rng.normal(0, 1, (n_per, d)) for c in centres])
        return X, np.repeat(np.arange(k), n_per)
    return centres, sample


def test_kmeans_and_silhouette_pick_the_true_number_of_clusters():
    _, sample = blobs(4, 30, 10, seed=0)
    X, y = sample(30, 1)
    k, scores, results = choose_k(X, (2, 8), seed=0)
    assert k == 4, scores
    assert purity(results[4].labels, list(y)) == 1.0  # every cluster is exactly one blob
    # the vectorized silhouette equals the textbook definition
    lab = results[3].labels
    D = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))
    ref = []
    for i in range(len(X)):
        own = lab == lab[i]
        a = D[i, own].sum() / (own.sum() - 1)
        b = min(D[i, lab == j].mean() for j in set(lab.tolist()) if j != lab[i])
        ref.append((b - a) / max(a, b))
    assert silhouette(X, lab) == pytest.approx(float(np.mean(ref)), rel=1e-9)
    assert (kmeans(X, 4, seed=0).labels == kmeans(X, 4, seed=0).labels).all()  # seeded: reproducible
    with pytest.raises(ValueError, match="k must be"):
        kmeans(X, len(X) + 1)
    with pytest.raises(ValueError, match="silhouette"):
        silhouette(X, np.zeros(len(X), dtype=int))


def test_classifier_accuracy_confidence_and_fallback():
    centres, sample = blobs(3, 40, 16, seed=2)
    X_tr, y_tr = sample(40, 3)
    X_te, y_te = sample(20, 4)  # held-out points from the same blobs
    mean, scale = standardizer(X_tr)
    F = features(X_tr, mean, scale)
    res = kmeans(F, 3, seed=0)
    clf = TaskClassifier.from_clusters(mean, scale, F, res.centroids, res.labels)
    to_true = {c: int(np.bincount(y_tr[res.labels == c]).argmax()) for c in range(3)}
    out = clf.classify_many(X_te)
    acc = np.mean([a.label is not None and to_true[a.label] == y for a, y in zip(out, y_te)])
    assert acc >= 0.95
    assert np.mean([a.label is None for a in out]) < 0.1
    assert all(0 < a.confidence <= 1 for a in out)
    # far from every cluster (opposite the data's mean direction, 5x away): falls back to the general draft
    far = clf.classify(-5 * centres.mean(0) / np.linalg.norm(centres.mean(0)) * np.linalg.norm(centres, axis=1).max())
    assert far.label is None and far.distance > clf.radius[far.nearest]
    with pytest.raises(ValueError, match="expects"):
        clf.classify(np.zeros(7))


def _constructed_prompts(n_per: int = 10):
    cats = ["code", "math", "prose"]
    prompts = [BenchPrompt(str(100 + 10 * c + i), cat, f"{cat} prompt number {i} about {cat}ish things")
               for c, cat in enumerate(cats) for i in range(n_per)]
    centres, _ = blobs(3, 1, 24, seed=5)
    rng = np.random.default_rng(6)
    X = np.stack([centres[cats.index(p.category)] + rng.normal(0, 1, 24) for p in prompts])

    def embed(id_lists):  # the "model": prompt index -> its constructed embedding
        return np.stack([X[ids[0]] for ids in id_lists]), [0.0] * len(id_lists)
    return prompts, [[i, i] for i in range(len(prompts))], embed


def test_split_fit_and_artifact_round_trip(tmp_path):
    prompts, ids, embed = _constructed_prompts()
    info = ({"model": "constructed", "spec": "none", "dtype": "float64", "pool_from": 0, "max_tokens": 8},
            {"path": "x.jsonl", "sha256": "0", "count": len(prompts)})
    art = fit_tasks(prompts, ids, embed, *info, FitConfig(k_range=(2, 6), seed=3))
    assert art.k == 3 and art.fit["train_purity"] == 1.0
    split = split_by_category([p.qid for p in prompts], [p.category for p in prompts], 0.25, 3)
    assert split == {q: a["split"] for q, a in art.assignments.items()}
    assert sum(v == "heldout" for v in split.values()) == 3 * round(0.25 * 10)
    assert split != split_by_category([p.qid for p in prompts], [p.category for p in prompts], 0.25, 4)
    for q in art.split["heldout"]:  # held-out prompts land in the cluster of their category
        a = art.assignments[q]
        assert art.cluster_category(a["cluster"]) == a["category"]
    assert {c["majority_category"] for c in art.clusters} == {"code", "math", "prose"}
    assert all(c["top_terms"] and c["examples"] for c in art.clusters)

    path = art.save(tmp_path / "tasks.json")
    back = TaskArtifact.load(path)
    for k, v in art.classifier.arrays().items():
        np.testing.assert_array_equal(back.classifier.arrays()[k], v)
    assert back.assignments == json.loads(json.dumps(art.assignments)) and back.split == art.split
    np.testing.assert_array_equal(back.category_centroids, art.category_centroids)
    doc = json.loads(path.read_text())
    doc["schema"] = 99
    (tmp_path / "future.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="schema 99"):
        TaskArtifact.load(tmp_path / "future.json")
    arrays_path(path).write_bytes(arrays_path(path).read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ValueError, match="SHA-256"):
        TaskArtifact.load(path)
    with pytest.raises(FileNotFoundError):
        TaskArtifact.load(tmp_path / "missing.json")


# ---------------------------------------------------------------------- model pieces
def test_hidden_states_and_training_forward_match_the_runtime(tiny_dir):
    lm = load_model(str(tiny_dir / "target"), dtype="fp32", progress=False)
    m = lm.model
    ids = list(range(3, 60, 2))
    x = torch.tensor([ids])
    logits = m(x, m.new_cache(1, 64))[0]
    hidden = m(x, m.new_cache(1, 64), return_hidden=True)[0]
    assert hidden.shape == (len(ids), m.args.dim)
    torch.testing.assert_close(m.lm_head(hidden), logits)
    base = trainable_base(lm.folder)
    torch.testing.assert_close(train_logits(base, ids), logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(train_logits(base, ids, [0, 5, 9]), logits[[0, 5, 9]], atol=1e-4, rtol=1e-4)
    # the blocks above a kept residual stream give the same logits as the whole pass
    for start in range(len(base.blocks) + 1):
        h = hidden_before(base, ids, start)
        torch.testing.assert_close(train_logits(base, ids, [0, 5, 9], start, h), logits[[0, 5, 9]],
                                   atol=1e-4, rtol=1e-4)
    # gradients reach the adapter through the frozen base
    model = adapted(base, Adapter.init(m.args, rank=4, seed=1), trainable=True)
    train_logits(model, ids).logsumexp(-1).sum().backward()
    grads = [p.grad for p in lora_parameters(model)]
    assert grads and all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    # the coarse KL is the exact KL when K covers the vocabulary
    p = torch.randn(5, 11).softmax(-1)
    q = torch.randn(5, 11)
    top = p.topk(11)
    exact = (p * (p.log() - q.log_softmax(-1))).sum(-1)
    torch.testing.assert_close(coarse_kl(q, top.indices, top.values), exact, atol=1e-5, rtol=1e-5)


def _random_adapter(args, seed: int) -> Adapter:
    ad = Adapter.init(args, rank=4, alpha=8.0, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    return Adapter(4, 8.0, {s: (A, torch.randn(B.shape, generator=g) * 0.2) for s, (A, B) in ad.weights.items()})


def test_lora_zero_init_is_identity_and_adapters_switch_without_reloading(tiny_dir, tmp_path):
    base = load_model(str(tiny_dir / "target"), dtype="fp32", progress=False).model
    x = torch.tensor([list(range(5, 45))])
    ref = base(x, base.new_cache(1, 64))
    torch.testing.assert_close(adapted(base, Adapter.init(base.args, rank=4, seed=0))(x, base.new_cache(1, 64)), ref)
    a1, a2 = _random_adapter(base.args, 1), _random_adapter(base.args, 2)
    a1.save(tmp_path / "a1.safetensors")
    loaded = Adapter.load(tmp_path / "a1.safetensors")
    assert loaded.rank == 4 and loaded.alpha == 8.0
    for s, (A, B) in a1.weights.items():
        assert torch.equal(loaded.weights[s][0], A) and torch.equal(loaded.weights[s][1], B)
    m1, m2 = adapted(base, loaded), adapted(base, a2)
    o1, o2 = m1(x, m1.new_cache(1, 64)), m2(x, m2.new_cache(1, 64))
    assert not torch.allclose(o1, ref, atol=1e-3) and not torch.allclose(o1, o2, atol=1e-3)
    torch.testing.assert_close(m1(x, m1.new_cache(1, 64)), o1)  # switching back and forth: same outputs
    # no reload: every base tensor is the base model's own storage
    assert m1.embed.data_ptr() == base.embed.data_ptr() and m1.lm_head is base.lm_head
    assert m1.norm.weight.data_ptr() == base.norm.weight.data_ptr()
    for b0, b1 in zip(base.blocks, m1.blocks):
        assert isinstance(b1.qkv, LoRALinear) and b1.qkv.base is b0.qkv and b1.down.base is b0.down
        assert b1.attn_norm.weight.data_ptr() == b0.attn_norm.weight.data_ptr()
    from tiny import tiny_config
    from specrouter.model.args import ModelArgs
    deeper = ModelArgs.from_hf_config(tiny_config(layers=3).to_dict())
    with pytest.raises(ValueError, match="does not exist"):
        adapted(base, Adapter.init(deeper, rank=2))


# ---------------------------------------------------------------------- alignment and routing (tiny models)
PROMPT_TEXTS = {
    "math": lambda i: f"{17 + 3 * i} + {40 - i} = ? {i * 7} - {i} = ? 1 2 3 4 5",
    "prose": lambda i: f"Write a short poem about the {['apple', 'river', 'stone', 'cloud'][i % 4]} at dawn, no. {i}.",
    "code": lambda i: f"def f_{i}(x):\n    return [x * {i} for _ in range({i})]",
}


@pytest.fixture(scope="module")
def task_env(tiny_dir, tmp_path_factory):
    """A draft that differs from the tiny target by a rank-2 perturbation of every layer matrix (within a
    LoRA's reach), a 3-category prompt file, a fitted task artifact and aligned adapters for two tasks."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("tasks")
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_dir / "target"))
    draft = copy.deepcopy(hf)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in draft.named_parameters():
            if p.dim() == 2 and "layers" in n:
                p.add_(0.03 * torch.randn(p.shape[0], 2, generator=g) @ torch.randn(2, p.shape[1], generator=g))
    save_folder(draft, root / "lowrank", byte_tokenizer())
    rows = [{"question_id": 16 * c + i, "category": cat, "turns": [make(i)]}
            for c, (cat, make) in enumerate(PROMPT_TEXTS.items()) for i in range(16)]
    (root / "prompts.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    common = ["--dtype", "fp32", "--threads", "1"]
    assert main(["tasks", "fit", "--prompts", str(root / "prompts.jsonl"), "--model", str(root / "lowrank"),
                 "--out", str(root / "tasks.json"), "--k-range", "2:6", *common]) == 0
    art = TaskArtifact.load(root / "tasks.json")
    big = sorted(range(art.k), key=lambda c: -art.clusters[c]["size"])[:2]
    assert main(["align", "--tasks", str(root / "tasks.json"), "--draft", str(root / "lowrank"), "--target",
                 str(tiny_dir / "target"), "--out", str(root / "aligned"), "--clusters", ",".join(map(str, big)),
                 "--steps", "40", "--lr", "3e-3", "--rank", "8", "--alpha", "16", "--max-new-tokens", "32",
                 "--eval-every", "20", "--ckpt-every", "10", *common]) == 0
    return {"root": root, "target": tiny_dir / "target", "draft": root / "lowrank", "art": art, "trained": big}


def test_alignment_lowers_the_loss_and_raises_held_out_agreement(task_env):
    manifest, adapters = load_adapters(task_env["root"] / "aligned")
    assert sorted(adapters) == sorted(task_env["trained"])
    base_agree = aligned_agree = base_tvd = aligned_tvd = 0.0
    for t in task_env["trained"]:
        e = manifest["tasks"][str(t)]
        losses = [h["loss"] for h in e["history"] if "loss" in h]
        assert len(losses) == 40 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
        held = [h["heldout"] for h in e["history"] if "heldout" in h]
        assert held[-1]["loss"] < held[0]["loss"]  # held-out distillation loss goes down too
        ex = e["heldout_exact"]
        n = ex["base"]["positions"]
        assert n > 0 and ex["aligned"]["positions"] == n
        base_agree += ex["base"]["agreement"] * n
        aligned_agree += ex["aligned"]["agreement"] * n
        base_tvd += ex["base"]["one_minus_tvd"] * n
        aligned_tvd += ex["aligned"]["one_minus_tvd"] * n
    assert aligned_agree > base_agree and aligned_tvd > base_tvd


def test_align_resume_continues_where_it_stopped(task_env, tmp_path):
    art_path, t = str(task_env["root"] / "tasks.json"), str(task_env["trained"][0])
    common = ["align", "--tasks", art_path, "--draft", str(task_env["draft"]), "--target", str(task_env["target"]),
              "--clusters", t, "--lr", "3e-3", "--rank", "4", "--max-new-tokens", "12", "--ckpt-every", "2",
              "--dtype", "fp32", "--threads", "1"]
    assert main([*common, "--out", str(tmp_path / "a"), "--steps", "4"]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--steps", "2"]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--steps", "4"]) == 2  # exists: needs --resume
    assert main([*common, "--out", str(tmp_path / "b"), "--steps", "4", "--resume"]) == 0
    (_, a), (_, b) = load_adapters(tmp_path / "a"), load_adapters(tmp_path / "b")
    for s, (A, B) in a[int(t)].weights.items():
        torch.testing.assert_close(b[int(t)].weights[s][0], A)
        torch.testing.assert_close(b[int(t)].weights[s][1], B)
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["tasks"][t]["steps"] == 4


def test_align_of_the_last_blocks_trains_only_them_on_kept_hidden_states(task_env, tmp_path):
    t = task_env["trained"][0]

    def run(out: str, steps: int, layers: int, period: int) -> dict:
        assert main(["align", "--tasks", str(task_env["root"] / "tasks.json"), "--draft", str(task_env["draft"]),
                     "--target", str(task_env["target"]), "--clusters", str(t), "--steps", str(steps), "--lr", "3e-3",
                     "--rank", "8", "--alpha", "16", "--max-new-tokens", "32", "--eval-every", str(period),
                     "--ckpt-every", str(period), "--layers", str(layers), "--train-prompts", "6",
                     "--heldout-prompts", "3", "--dtype", "fp32", "--threads", "1", "--out", str(tmp_path / out)]) == 0
        manifest, adapters = load_adapters(tmp_path / out)
        return {"entry": manifest["tasks"][str(t)], "adapter": adapters[t]}

    last = run("last1", 30, 1, 30)
    n_layers = load_model(str(task_env["draft"]), dtype="fp32", progress=False).model.args.n_layers
    assert n_layers > 1 and {s.split(".")[1] for s in last["adapter"].weights} == {str(n_layers - 1)}
    e = last["entry"]
    assert 0 < e["train_sequences"] <= 6 and 0 < e["heldout_sequences"] <= 3
    losses = [h["loss"] for h in e["history"] if "loss" in h]
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
    # step 0 is the base draft: its held-out loss over kept hidden states equals the whole-model pass's
    whole = run("whole", 1, 0, 1)["entry"]
    h0 = next(h["heldout"] for h in whole["history"] if "heldout" in h)
    assert h0["loss"] == pytest.approx(e["history"][0]["heldout"]["loss"], rel=1e-4)
    # after training, the held-out loss logged from kept hidden states is the trained adapter's own,
    # as a whole pass of a freshly built adapted draft computes it
    held = [Sequence(**d) for d in torch.load(tmp_path / "last1" / "data" / f"task{t}.pt", weights_only=False)["heldout"]]
    fresh = eval_coarse(adapted(trainable_base(task_env["draft"]), last["adapter"]), held, 10 ** 9)
    assert [h for h in e["history"] if "heldout" in h][-1]["heldout"]["loss"] == pytest.approx(fresh["loss"], rel=1e-4)


def test_align_distils_sampled_prompt_positions_beyond_the_shared_prefix(task_env, tmp_path):
    t = task_env["trained"][0]
    target = load_model(str(task_env["target"]), dtype="fp32", progress=False).model

    def run(out: str, n: int) -> tuple[dict, Adapter]:
        flags = ["--prompt-positions", str(n)] if n else []
        assert main(["align", "--tasks", str(task_env["root"] / "tasks.json"), "--draft", str(task_env["draft"]),
                     "--target", str(task_env["target"]), "--clusters", str(t), "--steps", "30", "--lr", "3e-3",
                     "--rank", "8", "--alpha", "16", "--max-new-tokens", "16", "--eval-every", "30", "--layers", "1",
                     "--train-prompts", "6", "--heldout-prompts", "2", *flags, "--dtype", "fp32", "--threads", "1",
                     "--out", str(tmp_path / out)]) == 0
        return torch.load(tmp_path / out / "data" / f"task{t}.pt", weights_only=False), load_adapters(tmp_path / out)[1][t]

    data, with_prompt = run("with", 8)
    _, without = run("without", 0)
    train = [Sequence(**d) for d in data["train"]]
    extra = data["prompt_targets"]
    assert extra["n"] == 8 and len(extra["train"]) == len(train) > 1
    shared = shared_prefix(train)
    assert shared > 0 and len({tuple(s.ids[:shared + 1]) for s in train}) > 1  # the chat template, exactly
    for s, d in zip(train, extra["train"]):
        pos = d["pos"]
        assert 0 < len(pos) <= 8 and pos == sorted(set(pos)) and shared - 1 <= pos[0] and pos[-1] < s.n_prompt - 1
        idx, p = topk_targets(target_logits(target, s.ids, pos, 10 ** 9), d["idx"].shape[1])
        assert torch.equal(idx, d["idx"]) and torch.allclose(p, d["p"])  # the target's own distribution there
    attach_prompt_targets(train, extra["train"])
    base = trainable_base(task_env["draft"])

    def prompt_kl(adapter) -> float:
        m = adapted(base, adapter)
        with torch.no_grad():
            return float(sum(coarse_kl(train_logits(m, s.ids, s.extra_pos), s.extra_idx, s.extra_p).sum()
                             for s in train))

    assert prompt_kl(with_prompt) < 0.9 * prompt_kl(without)  # the prompt positions were trained on


def test_align_data_is_the_targets_output_whatever_chain_generates_it(task_env, tmp_path):
    t = str(task_env["trained"][0])
    common = ["align", "--tasks", str(task_env["root"] / "tasks.json"), "--draft", str(task_env["draft"]), "--target",
              str(task_env["target"]), "--clusters", t, "--steps", "1", "--max-new-tokens", "32", "--dtype", "fp32",
              "--threads", "1"]
    assert main([*common, "--gen-chain", f"ngram>{task_env['target']}", "--out", str(tmp_path / "ng")]) == 0
    ref = torch.load(task_env["root"] / "aligned" / "data" / f"task{t}.pt", weights_only=False)
    got = torch.load(tmp_path / "ng" / "data" / f"task{t}.pt", weights_only=False)
    for split in ("train", "heldout"):
        assert [d["ids"] for d in got[split]] == [d["ids"] for d in ref[split]] and got[split]
    assert main([*common, "--gen-chain", f"ngram>{task_env['draft']}", "--out", str(tmp_path / "bad")]) == 2


def test_align_targets_from_verification_equal_a_teacher_forced_pass(task_env, tmp_path):
    """make_data keeps the p the target's verification computed while generating (no second pass); they
    must be the teacher-forced distributions at every continuation position, whatever the chain and batch."""
    target = load_model(str(task_env["target"]), dtype="fp32", progress=False).model
    t = str(task_env["trained"][0])
    assert main(["align", "--tasks", str(task_env["root"] / "tasks.json"), "--draft", str(task_env["draft"]),
                 "--target", str(task_env["target"]), "--clusters", t, "--steps", "1", "--max-new-tokens", "24",
                 "--gen-chain", f"ngram>{task_env['draft']}>{task_env['target']}", "--gen-batch", "3",
                 "--dtype", "fp32", "--threads", "1", "--out", str(tmp_path / "a")]) == 0
    for path in (task_env["root"] / "aligned", tmp_path / "a"):
        data = torch.load(path / "data" / f"task{t}.pt", weights_only=False)
        n = 0
        for d in data["train"] + data["heldout"]:
            s = Sequence(**d)
            assert s.idx.shape[0] == len(s.positions) > 0
            idx, p = topk_targets(target_logits(target, s.ids, s.positions, 10 ** 9), s.idx.shape[1])
            assert torch.equal(idx[:, :4], s.idx[:, :4]) and torch.allclose(p, s.p, atol=1e-5), path
            n += len(s.positions)
        assert n > 40


def test_align_adds_sampled_target_continuations_to_the_training_data(task_env, tmp_path):
    target = load_model(str(task_env["target"]), dtype="fp32", progress=False).model
    t = task_env["trained"][0]

    def run(out: str) -> dict:
        assert main(["align", "--tasks", str(task_env["root"] / "tasks.json"), "--draft", str(task_env["draft"]),
                     "--target", str(task_env["target"]), "--clusters", str(t), "--steps", "2", "--max-new-tokens",
                     "16", "--train-prompts", "4", "--heldout-prompts", "1", "--samples", "2", "--dtype", "fp32",
                     "--threads", "1", "--out", str(tmp_path / out)]) == 0
        return torch.load(tmp_path / out / "data" / f"task{t}.pt", weights_only=False)

    data = run("a")
    train = [Sequence(**d) for d in data["train"]]
    smp = [Sequence(**d) for d in data["samples"]["train"]]
    assert data["samples"]["n"] == 2 and len(smp) == 2 * len(train) == 8
    assert [s.ids[:s.n_prompt] for s in smp] == [s.ids[:s.n_prompt] for s in train for _ in range(2)]
    greedy = [s.ids for s in train for _ in range(2)]
    assert sum(a.ids != g for a, g in zip(smp, greedy)) >= 4  # samples, not the greedy answer again
    assert sum(smp[2 * i].ids != smp[2 * i + 1].ids for i in range(4)) >= 2  # two seeds per prompt
    for s in smp:  # what is stored is the target's T = 1 distribution along the sampled answer
        idx, p = topk_targets(target_logits(target, s.ids, s.positions, 10 ** 9), s.idx.shape[1])
        assert torch.equal(idx[:, 0], s.idx[:, 0]) and torch.allclose(p, s.p, atol=1e-5)
    e = json.loads((tmp_path / "a" / "manifest.json").read_text())["tasks"][str(t)]
    assert e["train_sampled_sequences"] == 8 and e["train_sequences"] == 12
    assert e["train_positions"]["continuation"] == sum(len(s.positions) for s in train + smp)
    assert [d["ids"] for d in run("b")["samples"]["train"]] == [s.ids for s in smp]  # seeded


def test_align_config_chooses_the_adapted_blocks_and_slots(tiny_dir):
    args = load_model(str(tiny_dir / "target"), dtype="fp32", progress=False).model.args
    cfg = AlignConfig(layers=1, slots="qkv,o")
    ad = Adapter.init(args, rank=2, kinds=cfg.slot_kinds(), layers=cfg.adapted_layers(args.n_layers))
    assert sorted(ad.weights) == [f"blocks.{args.n_layers - 1}.o", f"blocks.{args.n_layers - 1}.qkv"]
    assert AlignConfig(layers=99).adapted_layers(args.n_layers) == range(0, args.n_layers)
    assert AlignConfig().adapted_layers(args.n_layers) == range(0, args.n_layers)
    for bad in ({"slots": "qkv,mlp"}, {"slots": ""}, {"layers": -1}, {"train_prompts": -2}, {"prompt_positions": -1},
                {"samples": -1}):
        with pytest.raises(ValueError):
            AlignConfig(**bad)


def test_prompt_samples_are_seeded_capped_and_in_order():
    qids = list(range(100, 140))
    a = sample_prompts(qids, 7, "0:1:train")
    assert a == sample_prompts(qids, 7, "0:1:train") and len(a) == 7 and a == sorted(a)
    assert set(a) <= set(qids) and a != sample_prompts(qids, 7, "0:2:train")
    assert sample_prompts(qids, 0, "x") == qids and sample_prompts(qids, 99, "x") == qids


def _heldout_prompts(art, n_per_cat: int = 1) -> tuple[list[str], list[str]]:
    seen, qids = {}, []
    for q in art.split["heldout"]:
        cat = art.assignments[q]["category"]
        if seen.get(cat, 0) < n_per_cat:
            seen[cat] = seen.get(cat, 0) + 1
            qids.append(q)
    return [PROMPT_TEXTS[art.assignments[q]["category"]](int(q) % 16) for q in qids], qids


@pytest.mark.parametrize("chain", ["fixed", "auto"])
def test_task_routed_drafts_are_lossless_in_a_batch(task_env, chain):
    root, target, draft = task_env["root"], str(task_env["target"]), str(task_env["draft"])
    prompts, qids = _heldout_prompts(task_env["art"], 2)
    assert len(prompts) >= 4
    params = SamplingParams(max_new_tokens=24)
    ref = [o.tokens for o in SpecRouter.from_chain(target, dtype="fp32", progress=False).generate(prompts, params)]
    kw = dict(tasks=str(root / "tasks.json"), adapters=str(root / "aligned"), dtype="fp32", progress=False,
              max_batch=3)
    if chain == "auto":
        sr = TaskSpecRouter.from_chain("auto", pool=f"ngram>{draft}>{target}", explore=0.3, **kw)
        sr.router.explore_slack = float("inf")  # explore every chain, the aligned drafts' included
    else:
        sr = TaskSpecRouter.from_chain(f"{draft}>{target}", **kw)
    outs = sr.generate(prompts, params)
    assert [o.tokens for o in outs] == ref  # the target verifies everything: output unchanged
    labels = [r["label"] for r in sr.labeler.log]  # admission order = prompt order
    # labelling at admission (the draft level's prefill) agrees with the offline fit's classification
    assert labels == [task_env["art"].assignments[q]["cluster"] for q in qids] and len(set(labels)) >= 2
    used = {sr.task_of(ch) for o in outs for ch in o.stats.chains}
    assert used & set(task_env["trained"])  # some rows drafted with their task's aligned draft
    if chain == "fixed":  # every row of a trained task used its own aligned draft, and only that one
        for o, lab in zip(outs, labels):
            tasks_used = {sr.task_of(ch) for ch in o.stats.chains}
            assert tasks_used == ({lab} if lab in task_env["trained"] else {None})


def test_tasks_eval_cli_reports_accuracy_and_latency(task_env, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["tasks", "eval", "--tasks", str(task_env["root"] / "tasks.json"), "--json", str(out),
                 "--threads", "1"]) == 0
    rep = json.loads(out.read_text())
    assert rep["n_heldout"] == len(task_env["art"].split["heldout"])
    assert 0 <= rep["accuracy"] <= 1 and rep["same_as_fit_assignment"] == 1.0
    assert rep["latency_ms"]["classify"]["median"] > 0 and rep["latency_ms"]["embedding_forward"]["median"] > 0
    assert "accuracy vs category" in capsys.readouterr().out


def test_generate_with_task_drafts_says_which_draft_ran(task_env, capsys):
    root, t = task_env["root"], task_env["trained"][0]
    text = PROMPT_TEXTS[task_env["art"].clusters[t]["majority_category"]](3)
    assert main(["generate", text, "--raw", "--chain", f"{task_env['draft']}>{task_env['target']}", "--tasks",
                 str(root / "tasks.json"), "--adapters", str(root / "aligned"), "--max-new-tokens", "12",
                 "--dtype", "fp32", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "(steps: " in err and "#t" in err  # the aligned draft that ran, not just the chain named


def test_bad_inputs_fail_clearly(task_env, tmp_path):
    root, target = task_env["root"], str(task_env["target"])
    with pytest.raises(ValueError, match="embeds prompts with"):  # the chain's draft is not the embedding model
        TaskSpecRouter.from_chain(f"{target}>{target}", tasks=str(root / "tasks.json"), dtype="fp32", progress=False)
    assert main(["generate", "hi", "--chain", target, "--adapters", str(root / "aligned")]) == 2
    assert main(["tasks", "fit", "--prompts", str(root / "prompts.jsonl"), "--out", str(tmp_path / "x.txt")]) == 2
    assert main(["align", "--tasks", str(root / "tasks.json"), "--draft", str(task_env["draft"]), "--target",
                 target, "--out", str(tmp_path / "o"), "--clusters", "99", "--dtype", "fp32"]) == 2
    with pytest.raises(FileNotFoundError, match="manifest"):
        load_adapters(tmp_path)


def test_task_similarity_keeps_acceptance_statistics_per_task():
    from specrouter.router.similarity import Similarity
    from specrouter.speculate import PairFeedback
    from specrouter.tasks.routing import TaskSimilarity

    sim = TaskSimilarity([0, 1], lambda t: Similarity({("d", "t"): 0.5}))
    for slot in range(3):
        sim.add_row(slot)
    sim.set_task(0, 0)
    sim.set_task(1, 1)  # row 2 stays unlabeled: the general bucket
    for _ in range(20):
        sim.observe(PairFeedback(0, "d", "t", 4, 4, [0.0] * 4))  # task 0's draft is always accepted
        sim.observe(PairFeedback(1, "d", "t", 4, 0, [0.9]))  # task 1's never
    assert sim.alpha("d", "t", 0) > 0.9 and sim.alpha("d", "t", 1) < 0.1
    assert sim.by_task[0].alpha("d", "t") > 0.9 > 0.1 > sim.by_task[1].alpha("d", "t")  # per-task globals
    assert sim.alpha("d", "t", 2) == 0.5  # the general bucket saw nothing
    sim.remove_row(0, 2)  # row 2 (general) moves into slot 0
    assert sim.row_task == [None, 1] and sim.alpha("d", "t", 0) == 0.5
    with pytest.raises(ValueError, match="unknown task"):
        sim.set_task(0, 7)


def test_bench_cli_runs_task_routed_drafts_on_held_out_prompts(task_env, tmp_path):
    root, target, draft = task_env["root"], str(task_env["target"]), str(task_env["draft"])
    out = tmp_path / "bench.json"
    assert main(["bench", "--prompts", str(root / "prompts.jsonl"), "--chains", f"{draft}>{target}", "--tasks",
                 str(root / "tasks.json"), "--adapters", str(root / "aligned"), "--no-hf", "--max-new-tokens", "8",
                 "--per-category", "1", "--batch-size", "2", "--out", str(out), "--dtype", "fp32",
                 "--threads", "1"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {r["qid"] for r in rows} <= set(task_env["art"].split["heldout"]) and len(rows) == 3
    for r in rows:
        assert r[f"{draft}>{target}+tasks"]["match"] and r[f"{draft}>{target}"]["match"]
