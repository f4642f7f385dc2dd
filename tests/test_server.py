"""The OpenAI-compatible server, end to end: a real ``specrouter serve`` process on loopback (tiny
models), driven by the official ``openai`` client and httpx, compared with the offline engine."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from serverutil import MODEL, metric, start_server, tiny_chain, wait_until

from specrouter.api import SpecRouter
from specrouter.sampling import SamplingParams

PROMPT = "The quick brown fox"
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a prime."}]
SAMPLINGS = [dict(temperature=0.0), dict(temperature=0.8, seed=3), dict(temperature=1.0, top_p=0.9, seed=5)]


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    srv = start_server(tiny_dir, tmp_path_factory.mktemp("serve"), "--max-batch", "4")
    yield srv
    alive = srv.proc.poll() is None
    srv.stop()
    assert alive, "the server process died during the tests"


@pytest.fixture(scope="module")
def offline(tiny_dir):
    return SpecRouter.from_chain(tiny_chain(tiny_dir), dtype="fp32", progress=False, max_batch=4, batch_cap=False)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)


def ref(offline, prompt, chat, max_tokens, stop=(), **sampling):
    params = SamplingParams(max_new_tokens=max_tokens, stop=tuple(stop), **sampling)
    return offline.generate([prompt], params, chat=chat)[0]


def stream_text(client, chat: bool, **kw) -> tuple[str, str, object, list[str]]:
    """(text, finish_reason, usage, deltas) of one streamed request."""
    if chat:
        it = client.chat.completions.create(model=MODEL, stream=True, stream_options={"include_usage": True}, **kw)
    else:
        it = client.completions.create(model=MODEL, stream=True, stream_options={"include_usage": True}, **kw)
    deltas, finish, usage = [], None, None
    for chunk in it:
        usage = chunk.usage or usage
        for c in chunk.choices:
            d = c.delta.content if chat else c.text
            if d:
                deltas.append(d)
            finish = c.finish_reason or finish
    return "".join(deltas), finish, usage, deltas


def test_health_and_models(server, client):
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["model"] == MODEL and h["max_batch"] == 4
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["greedy", "t0.8", "t1-topp"])
def test_completion_equals_offline_engine(client, offline, sampling):
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=40, **sampling)
    want = ref(offline, PROMPT, False, 40, **sampling)
    assert r.choices[0].text == want.text and want.text
    assert r.choices[0].finish_reason == want.finish_reason
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (want.prompt_tokens, len(want.tokens))
    spec = r.usage.model_extra["speculative"]
    assert spec["target_steps"] == want.stats.steps < r.usage.completion_tokens + 1
    assert spec["drafted_tokens"] == want.stats.drafted >= spec["accepted_tokens"] == want.stats.accepted
    assert sum(spec["chains"].values()) == spec["target_steps"]


@pytest.mark.parametrize("sampling", SAMPLINGS[:2], ids=["greedy", "t0.8"])
def test_chat_equals_offline_engine(client, offline, sampling):
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=30, **sampling)
    want = ref(offline, MESSAGES, True, 30, **sampling)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want.text
    assert r.usage.prompt_tokens == want.prompt_tokens == len(offline.tokenizer.chat(MESSAGES))


@pytest.mark.parametrize("chat", [False, True], ids=["completion", "chat"])
@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["greedy", "t0.8", "t1-topp"])
def test_stream_equals_non_streamed(client, chat, sampling):
    kw = dict(messages=MESSAGES) if chat else dict(prompt=PROMPT)
    make = client.chat.completions.create if chat else client.completions.create
    full = make(model=MODEL, max_tokens=48, **kw, **sampling)
    text, finish, usage, deltas = stream_text(client, chat, max_tokens=48, **kw, **sampling)
    want = full.choices[0].message.content if chat else full.choices[0].text
    assert text == want and len(deltas) > 1
    assert finish == full.choices[0].finish_reason
    assert usage.completion_tokens == full.usage.completion_tokens


def test_sse_wire_format(server):
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 6, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]" and lines.count("data: [DONE]") == 1
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and "usage" not in chunks[-1]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["object"] == "chat.completion.chunk"


def _printable_stop(text: str, at_least: int) -> tuple[str, int]:
    """A 2-character stop string whose first occurrence in ``text`` is at index >= at_least."""
    for k in range(at_least, len(text) - 2):
        s = text[k:k + 2]
        if s.isprintable() and "\ufffd" not in s and text.find(s) == k:
            return s, k
    raise AssertionError(f"no usable stop string in {text!r}")


@pytest.mark.parametrize("chat", [False, True], ids=["completion", "chat"])
def test_stop_strings(client, offline, chat):
    prompt = MESSAGES if chat else PROMPT
    kw = dict(messages=MESSAGES) if chat else dict(prompt=PROMPT)
    make = client.chat.completions.create if chat else client.completions.create
    free = ref(offline, prompt, chat, 80, temperature=0.0, ignore_eos=True).text
    stop, k = _printable_stop(free, 12)
    later, _ = _printable_stop(free, k + 4)
    for stops in ([stop], [later, stop], stop):  # list, earliest of several, bare string
        r = make(model=MODEL, max_tokens=80, temperature=0, stop=stops, extra_body={"ignore_eos": True}, **kw)
        got = r.choices[0].message.content if chat else r.choices[0].text
        assert got == free[:k] and r.choices[0].finish_reason == "stop"
        text, finish, _, deltas = stream_text(client, chat, max_tokens=80, temperature=0, stop=stops,
                                              extra_body={"ignore_eos": True}, **kw)
        assert text == free[:k] and finish == "stop"
        assert not any(stop in d for d in deltas) and stop not in text
    r = make(model=MODEL, max_tokens=80, temperature=0, stop=["\x00never"], extra_body={"ignore_eos": True}, **kw)
    assert (r.choices[0].message.content if chat else r.choices[0].text) == free
    assert r.choices[0].finish_reason == "length"


def test_seed_reproducibility_alone_and_batched(client):
    kw = dict(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=1.0)
    first = client.completions.create(seed=11, **kw).choices[0].text
    assert client.completions.create(seed=11, **kw).choices[0].text == first
    assert client.completions.create(seed=12, **kw).choices[0].text != first
    # the same seeded request inside a busy batch (other prompts, other seeds) gives the same text
    jobs = [dict(seed=11, **kw)] * 3 + [dict(kw, prompt=f"noise {i}", seed=i, max_tokens=20 + 7 * i) for i in range(4)]
    with ThreadPoolExecutor(len(jobs)) as ex:
        outs = list(ex.map(lambda j: client.completions.create(**j).choices[0].text, jobs))
    assert outs[:3] == [first] * 3


def test_omitted_temperature_means_one(client):
    kw = dict(model=MODEL, prompt=PROMPT, max_tokens=30, seed=21)
    omitted = client.completions.create(**kw).choices[0].text
    assert omitted == client.completions.create(temperature=1.0, **kw).choices[0].text
    assert omitted != client.completions.create(temperature=0.0, **kw).choices[0].text


def test_seeded_sampling_is_batch_invariant_offline(offline):
    """Engine level: a seeded row's random stream must not depend on the rest of the batch (each row
    draws randomness only for its own drafts; the batch cap, which couples draft lengths, is off)."""
    p = SamplingParams(temperature=0.8, max_new_tokens=48, seed=7, ignore_eos=True)
    alone = offline.generate([PROMPT], p, chat=False)[0].tokens
    others = [SamplingParams(temperature=0.9, max_new_tokens=16 + 9 * i, seed=i, ignore_eos=True) for i in range(3)]
    batched = offline.generate([PROMPT, "abc", "x" * 30, "zz"], [p] + others, chat=False)[0].tokens
    assert batched == alone


def test_requests_join_a_running_batch(server, client):
    """A short request sent while a long one streams finishes first: it joined between steps, and
    /health answers meanwhile (the forward runs on the engine thread, not the event loop)."""
    order = []
    first_chunk = threading.Event()

    def long():
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 400, "temperature": 0, "ignore_eos": True,
                "stream": True}
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
            for ln in r.iter_lines():
                first_chunk.set()
                if ln == "data: [DONE]":
                    order.append("long")

    t = threading.Thread(target=long)
    t.start()
    assert first_chunk.wait(30)
    steps_before = metric(server.url, "specrouter_step_batch_size_sum") - metric(
        server.url, "specrouter_step_batch_size_count")
    client.completions.create(model=MODEL, prompt="hi", max_tokens=5, temperature=0)
    order.append("short")
    assert httpx.get(server.url + "/health", timeout=5).json()["running"] == 1  # answered mid-generation
    t.join(60)
    assert order == ["short", "long"]
    # some steps ran two rows at once: sum(rows) - count(steps) grew
    assert metric(server.url, "specrouter_step_batch_size_sum") - metric(
        server.url, "specrouter_step_batch_size_count") > steps_before


def test_client_disconnect_cancels_its_row(server):
    aborts = metric(server.url, "specrouter_generations_total", reason="abort")
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 450, "temperature": 0, "ignore_eos": True,
            "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i >= 3:
                break  # leaving the block closes the connection mid-stream
    assert wait_until(lambda: metric(server.url, "specrouter_generations_total", reason="abort") == aborts + 1)
    assert wait_until(lambda: metric(server.url, "specrouter_batch_occupancy") == 0)
    # a non-streamed request whose client gives up is cancelled too
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json={**body, "stream": False}, timeout=0.3)
    assert wait_until(lambda: metric(server.url, "specrouter_generations_total", reason="abort") == aborts + 2)
    assert wait_until(lambda: metric(server.url, "specrouter_batch_occupancy") == 0)
    assert httpx.get(server.url + "/health").status_code == 200


def test_metrics_exposition(server, client, tiny_dir):
    client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0)
    url, chain = server.url, tiny_chain(tiny_dir)
    draft, target = chain.split(">")
    assert metric(url, "specrouter_requests_total", route="/v1/completions", status="200") >= 1
    assert metric(url, "specrouter_generation_tokens_total") >= 12
    assert metric(url, "specrouter_prompt_tokens_total") > 0
    assert metric(url, "specrouter_time_per_output_token_seconds_count") >= 1
    assert metric(url, "specrouter_time_to_first_token_seconds_count") >= 1
    drafted = metric(url, "specrouter_drafted_tokens_total", level=draft, verifier=target)
    accepted = metric(url, "specrouter_accepted_tokens_total", level=draft, verifier=target)
    assert drafted > 0 and 0 <= accepted <= drafted
    assert metric(url, "specrouter_acceptance_rate", level=draft, verifier=target) == pytest.approx(accepted / drafted)
    # every row-step ran on the one configured chain
    assert wait_until(lambda: metric(url, "specrouter_batch_occupancy") == 0)
    row_steps = metric(url, "specrouter_speculation_length_count")
    assert row_steps > 0 and metric(url, "specrouter_chain_steps_total", chain=chain) == row_steps
    assert metric(url, "specrouter_engine_steps_total") <= row_steps
    assert metric(url, "specrouter_batch_capacity") == 4
    assert metric(url, "specrouter_queue_depth") == 0
    text = httpx.get(url + "/metrics").text
    assert "specrouter_step_batch_size_bucket" in text and "specrouter_accepted_per_step_bucket" in text


def test_short_load_run(tiny_dir, tmp_path):
    """The load benchmark, briefly: 8 streaming clients, some dropping out, against a fresh server."""
    from specrouter.bench.load import LoadConfig, run

    cfg = LoadConfig(chain=tiny_chain(tiny_dir), dtype="fp32", clients=8, duration=12, grace=60, pool=12,
                     min_tokens=8, max_tokens=40, disconnect_fraction=0.25, max_batch=4, threads=1,
                     server_log=str(tmp_path / "load-server.log"))
    lines = []
    t0 = time.monotonic()
    rep = run(cfg, log=lines.append)
    assert time.monotonic() - t0 < 120
    assert rep.ok, "\n".join(lines)
    assert rep.complete > 12 and rep.dropped > 0 and rep.mean_batch_rows > 1
