"""Bad input against a real server process: each case's status, OpenAI-style error body and the
field it names; a full queue (429); and the server still serving correctly afterwards."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from serverutil import MODEL, start_server, tiny_chain

from specrouter.cli import main

KEY = "s3cret-key"
C, CC = "/v1/completions", "/v1/chat/completions"
GOOD = {"model": MODEL, "prompt": "hi", "max_tokens": 4, "temperature": 0}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
AUTH = {"Authorization": f"Bearer {KEY}"}

# (case, method, path, body: dict (JSON) or bytes (raw), headers, status, message fragment, param)
CASES = [
    ("malformed JSON", "POST", C, b'{"model": "tiny", "prompt": ', AUTH, 400, "request body is not valid JSON", None),
    ("body is not an object", "POST", C, b"[1, 2]", AUTH, 400, "request body must be a JSON object, got array", None),
    ("NaN is not JSON", "POST", C, b'{"model": "tiny", "prompt": "hi", "temperature": NaN}', AUTH, 400,
     "NaN is not valid JSON", None),
    ("missing model", "POST", C, {"prompt": "hi"}, AUTH, 400, "model is required", "model"),
    ("unknown model", "POST", C, {**GOOD, "model": "gpt-4"}, AUTH, 404, "model 'gpt-4' does not exist", "model"),
    ("model of wrong type", "POST", C, {**GOOD, "model": 7}, AUTH, 400, "model must be a string, got integer 7",
     "model"),
    ("missing prompt", "POST", C, {"model": MODEL}, AUTH, 400, "prompt is required", "prompt"),
    ("prompt of wrong type", "POST", C, {**GOOD, "prompt": 42}, AUTH, 400,
     "prompt must be a string or an array of token ids, got integer 42", "prompt"),
    ("empty prompt", "POST", C, {**GOOD, "prompt": ""}, AUTH, 400, "prompt must not be empty", "prompt"),
    ("several prompts", "POST", C, {**GOOD, "prompt": ["a", "b"]}, AUTH, 400, "one prompt per request is supported",
     "prompt"),
    ("token id out of range", "POST", C, {**GOOD, "prompt": [1, 99999]}, AUTH, 400,
     "prompt[1] = 99999 is not a token id", "prompt"),
    ("oversized prompt", "POST", C, {**GOOD, "prompt": "x" * 600}, AUTH, 400,
     "prompt is too long: 600 tokens, but the context holds 512 tokens", "prompt"),
    ("negative max_tokens", "POST", C, {**GOOD, "max_tokens": -5}, AUTH, 400, "max_tokens must be >= 1, got -5",
     "max_tokens"),
    ("huge max_tokens", "POST", C, {**GOOD, "max_tokens": 10 ** 9}, AUTH, 400,
     "max_tokens is too large: 1000000000 new tokens plus the 2-token prompt exceed the context of 512 tokens",
     "max_tokens"),
    ("max_tokens as string", "POST", C, {**GOOD, "max_tokens": "10"}, AUTH, 400,
     'max_tokens must be an integer, got string "10"', "max_tokens"),
    ("max_tokens as boolean", "POST", C, {**GOOD, "max_tokens": True}, AUTH, 400,
     "max_tokens must be an integer, got boolean true", "max_tokens"),
    ("max_tokens as float", "POST", C, {**GOOD, "max_tokens": 10.5}, AUTH, 400,
     "max_tokens must be an integer, got number 10.5", "max_tokens"),
    ("temperature too high", "POST", C, {**GOOD, "temperature": 2.5}, AUTH, 400,
     "temperature must be in [0, 2], got 2.5", "temperature"),
    ("negative temperature", "POST", C, {**GOOD, "temperature": -0.1}, AUTH, 400,
     "temperature must be in [0, 2], got -0.1", "temperature"),
    ("temperature as string", "POST", C, {**GOOD, "temperature": "hot"}, AUTH, 400,
     'temperature must be a number, got string "hot"', "temperature"),
    ("top_p out of range", "POST", C, {**GOOD, "top_p": 1.5}, AUTH, 400, "top_p must be in [0, 1], got 1.5", "top_p"),
    ("seed of wrong type", "POST", C, {**GOOD, "seed": "abc"}, AUTH, 400, 'seed must be an integer, got string "abc"',
     "seed"),
    ("seed out of range", "POST", C, {**GOOD, "seed": 2 ** 64}, AUTH, 400, "seed must be in [", "seed"),
    ("five stop strings", "POST", C, {**GOOD, "stop": list("abcde")}, AUTH, 400,
     "stop accepts at most 4 strings, got 5", "stop"),
    ("empty stop string", "POST", C, {**GOOD, "stop": [""]}, AUTH, 400, "stop strings must not be empty", "stop"),
    ("stop of wrong type", "POST", C, {**GOOD, "stop": 5}, AUTH, 400,
     "stop must be a string or an array of strings, got integer 5", "stop"),
    ("n = 2", "POST", C, {**GOOD, "n": 2}, AUTH, 400, "n other than 1 is not supported", "n"),
    ("stream not a boolean", "POST", C, {**GOOD, "stream": "yes"}, AUTH, 400,
     'stream must be a boolean, got string "yes"', "stream"),
    ("stream_options without stream", "POST", C, {**GOOD, "stream_options": {"include_usage": True}}, AUTH, 400,
     "stream_options is only allowed when stream is true", "stream_options"),
    ("echo", "POST", C, {**GOOD, "echo": True}, AUTH, 400, "echo is not supported by this server", "echo"),
    ("frequency_penalty", "POST", C, {**GOOD, "frequency_penalty": 0.5}, AUTH, 400,
     "non-zero frequency_penalty is not supported", "frequency_penalty"),
    ("missing messages", "POST", CC, {"model": MODEL}, AUTH, 400, "messages is required", "messages"),
    ("empty messages", "POST", CC, {**CHAT, "messages": []}, AUTH, 400, "messages must not be empty", "messages"),
    ("messages not an array", "POST", CC, {**CHAT, "messages": "hi"}, AUTH, 400,
     "messages must be an array of message objects", "messages"),
    ("unknown role", "POST", CC, {**CHAT, "messages": [{"role": "wizard", "content": "hi"}]}, AUTH, 400,
     "messages[0].role must be one of system, developer, user, assistant", "messages[0].role"),
    ("content of wrong type", "POST", CC, {**CHAT, "messages": [{"role": "user", "content": 5}]}, AUTH, 400,
     "messages[0].content must be a string or an array of text parts, got integer 5", "messages[0].content"),
    ("image content part", "POST", CC,
     {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, AUTH,
     400, "messages[0].content[0] must be a text part", "messages[0].content"),
    ("oversized chat prompt", "POST", CC, {**CHAT, "messages": [{"role": "user", "content": "y" * 600}]}, AUTH, 400,
     "messages is too long", "messages"),
    ("tools", "POST", CC, {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, AUTH, 400,
     "tools is not supported", "tools"),
    ("body over 1 MiB", "POST", C, {**GOOD, "prompt": "z" * (1 << 20)}, AUTH, 413, "the limit is 1048576", None),
    ("wrong API key", "POST", C, GOOD, {"Authorization": "Bearer not-the-key"}, 401, "incorrect API key provided",
     None),
    ("missing API key", "POST", C, GOOD, {}, 401, "missing API key", None),
    ("not a Bearer token", "POST", C, GOOD, {"Authorization": f"Basic {KEY}"}, 401, "missing API key", None),
    ("models without key", "GET", "/v1/models", None, {}, 401, "missing API key", None),
    ("unknown route", "POST", "/v1/embeddings", GOOD, AUTH, 404, "Not Found", None),
    ("wrong method", "GET", C, None, AUTH, 405, "Method Not Allowed", None),
]


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    srv = start_server(tiny_dir, tmp_path_factory.mktemp("serve-bad"), "--api-key", KEY, "--max-batch", "1",
                       "--max-queue", "1")
    yield srv
    alive = srv.proc.poll() is None
    srv.stop()
    assert alive, "the server process died: a bad request took it down"


def send(url, method, path, body, headers, timeout=30):
    kw = {"content": body} if isinstance(body, bytes) else ({"json": body} if body is not None else {})
    return httpx.request(method, url + path, headers=headers, timeout=timeout, **kw)


@pytest.mark.parametrize("case,method,path,body,headers,status,message,param", CASES, ids=[c[0] for c in CASES])
def test_bad_input(server, case, method, path, body, headers, status, message, param):
    r = send(server.url, method, path, body, headers)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert message in err["message"]
    assert err["param"] == param
    assert set(err) == {"message", "type", "param", "code"} and err["type"]


def test_full_queue_is_429(server):
    """max batch 1 + queue 1: of 6 simultaneous long requests, two are taken and the rest get 429."""
    body = {**GOOD, "max_tokens": 400, "ignore_eos": True}
    with ThreadPoolExecutor(6) as ex:
        rs = list(ex.map(lambda _: send(server.url, "POST", C, body, AUTH, timeout=120), range(6)))
    codes = sorted(r.status_code for r in rs)
    assert codes.count(200) >= 2 and codes.count(429) >= 1 and set(codes) == {200, 429}, codes
    err = next(r for r in rs if r.status_code == 429).json()["error"]
    assert "at capacity" in err["message"] and err["type"] == "rate_limit_error" and err["code"] == "queue_full"


def test_official_client_sees_the_errors(server):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="incorrect API key"):
        bad.completions.create(model=MODEL, prompt="hi", max_tokens=2)
    good = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError, match=r"temperature must be in \[0, 2\]"):
        good.completions.create(model=MODEL, prompt="hi", max_tokens=2, temperature=3)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        good.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="messages must not be empty"):
        good.chat.completions.create(model=MODEL, messages=[])


def test_still_healthy_and_correct_after_bad_input(server):
    assert httpx.get(server.url + "/health").json()["status"] == "ok"  # /health needs no key
    good = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    a = good.completions.create(model=MODEL, prompt="hi", max_tokens=8, temperature=0)
    b = good.completions.create(model=MODEL, prompt="hi", max_tokens=8, temperature=0)
    assert a.choices[0].text == b.choices[0].text and a.usage.completion_tokens == 8


@pytest.mark.parametrize("argv,fragment", [
    (["serve", "--port", "70000"], "port must be an integer in [0, 65535]"),
    (["serve", "--max-queue", "-1"], "max_queue must be an integer >= 0"),
    (["bench-load", "--url", "http://10.1.2.3:8000"], "--url must be http:// on loopback"),
    (["bench-load", "--clients", "0"], "--clients must be in [1, 256]"),
])
def test_cli_rejects_bad_options_before_loading(tiny_dir, capsys, argv, fragment):
    assert main(argv[:1] + ["--chain", tiny_chain(tiny_dir)] + argv[1:]) == 2
    assert fragment in capsys.readouterr().err
