"""The whole cluster through the gateway, on tinyA-bf16, with the official
openai SDK and with curl: chat and completions, streaming, usage, stop
strings across tokens, n>1, logprobs, seeds, tools in the template, every
error status, and a disconnect that cancels its request."""
import json
import re
import socket
import subprocess
import threading
import time
import urllib.request

import openai
import pytest

from cluster import FullCluster


@pytest.fixture(scope="module")
def cluster(bin_dir, ref_dir, tmp_path_factory):
    c = FullCluster(bin_dir, ref_dir / "tinyA-bf16.gguf", tmp_path_factory.mktemp("gw"), workers=1, kv_tokens=4096)
    yield c
    codes = c.stop()
    assert all(code == 0 for code in codes), c.logs()


@pytest.fixture(scope="module")
def client(cluster):
    return openai.OpenAI(base_url=cluster.base + "/v1", api_key="unused", max_retries=0, timeout=120)


def post(cluster, path, body, headers=None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(cluster.base + path, data=data, headers={"Content-Type": "application/json",
                                                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_models_and_health(cluster, client):
    assert [m.id for m in client.models.list().data] == ["tinyA"]
    with urllib.request.urlopen(cluster.base + "/health") as r:
        assert json.loads(r.read())["status"] == "ok"


def test_chat_greedy_equals_model_generate(cluster, client, bin_dir, ref_dir):
    r = client.chat.completions.create(model="tinyA", messages=[{"role": "user", "content": "Hello!"}],
                                       max_tokens=12, temperature=0)
    p = subprocess.run([bin_dir / "model-generate", "--model", ref_dir / "tinyA-bf16.gguf", "--prompt", "Hello!",
                        "--chat", "--max-tokens", "12", "--threads", "1"], capture_output=True, text=True, check=True)
    assert r.choices[0].message.content == p.stdout.rstrip("\n")
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == 10 and r.usage.completion_tokens == 12 and r.usage.total_tokens == 22
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion"


def test_streaming_matches_and_reports_usage(client):
    args = dict(model="tinyA", messages=[{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": [{"type": "text", "text": "Tell me a story."}]}],
                max_tokens=20, temperature=0)
    whole = client.chat.completions.create(**args)
    chunks = list(client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_completions_and_stop_across_tokens(client):
    base = client.completions.create(model="tinyA", prompt="Once upon a time", max_tokens=16, temperature=0,
                                     logprobs=1)
    text, tokens = base.choices[0].text, base.choices[0].logprobs.tokens
    assert "".join(tokens) == text
    # a stop string made of the end of one token and the start of the next
    k = next(i for i in range(3, len(tokens) - 1) if len(tokens[i]) >= 2 and len(tokens[i + 1]) >= 2)
    stop = tokens[k][-2:] + tokens[k + 1][:2]
    want = text[:text.index(stop)]
    r = client.completions.create(model="tinyA", prompt="Once upon a time", max_tokens=16, temperature=0, stop=[stop])
    assert r.choices[0].text == want and r.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="tinyA", prompt="Once upon a time", max_tokens=16, temperature=0,
                                         stop=stop, stream=True)
    parts = list(streamed)
    assert "".join(c.choices[0].text for c in parts if c.choices) == want
    assert parts[-1].choices[0].finish_reason == "stop"


def test_n_seed_and_logprobs(client):
    args = dict(model="tinyA", messages=[{"role": "user", "content": "Pick a word."}], max_tokens=8, temperature=1.0,
                seed=1234, n=3)
    a = client.chat.completions.create(**args)
    b = client.chat.completions.create(**args)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert len({c.message.content for c in a.choices}) > 1  # choices draw differently
    c = client.chat.completions.create(**{**args, "seed": 99})
    assert [x.message.content for x in c.choices] != [x.message.content for x in a.choices]
    g = client.chat.completions.create(model="tinyA", messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
                                       temperature=0, logprobs=True, top_logprobs=3)
    content = g.choices[0].logprobs.content
    assert len(content) == 5
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.token == entry.top_logprobs[0].token  # greedy picks the top one
        assert abs(entry.logprob - entry.top_logprobs[0].logprob) < 1e-5
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob


def test_tools_reach_the_template(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    plain = client.chat.completions.create(model="tinyA", messages=msgs, max_tokens=2, temperature=0)
    with_tools = client.chat.completions.create(model="tinyA", messages=msgs, tools=tools, max_tokens=2,
                                                temperature=0)
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens + 30
    # an earlier assistant tool call and its result render too
    history = msgs + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    r = client.chat.completions.create(model="tinyA", messages=history, tools=tools, max_tokens=2, temperature=0)
    assert r.usage.prompt_tokens > with_tools.usage.prompt_tokens


def test_prefix_cache_reported(client):
    long = "You are a helpful assistant. " * 40
    msgs = [{"role": "system", "content": long}, {"role": "user", "content": "First question?"}]
    client.chat.completions.create(model="tinyA", messages=msgs, max_tokens=2, temperature=0)
    msgs[1]["content"] = "Second question?"
    r = client.chat.completions.create(model="tinyA", messages=msgs, max_tokens=2, temperature=0)
    assert r.usage.prompt_tokens_details.cached_tokens >= 200


def test_errors(cluster, client):
    assert post(cluster, "/v1/chat/completions", b"{not json")[0] == 400
    code, body = post(cluster, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                         "temperature": "hot"})
    assert code == 400 and body["error"]["param"] == "temperature" and body["error"]["type"] == "invalid_request_error"
    code, body = post(cluster, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                         "max_tokens": 1e30})
    assert code == 400 and body["error"]["param"] == "max_tokens"
    assert post(cluster, "/v1/chat/completions", {"messages": []})[0] == 400
    code, body = post(cluster, "/v1/chat/completions", {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]})
    assert code == 404 and body["error"]["code"] == "model_not_found"
    code, body = post(cluster, "/v1/nothing", {})
    assert code == 404
    code, body = post(cluster, "/v1/completions", b"{\"prompt\": \"" + b"a" * (5 << 20) + b"\"}")
    assert code == 413
    code, body = post(cluster, "/v1/completions", {"prompt": "word " * 5000, "max_tokens": 10})
    assert code == 400 and "maximum context length is 4096 tokens" in body["error"]["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tinyA", messages=[{"role": "wizard", "content": "x"}])
    # invalid UTF-8 and odd types are answered, not crashed on
    assert post(cluster, "/v1/completions", b"{\"prompt\": \"\xff\xfe\"}")[0] == 400
    assert post(cluster, "/v1/completions", {"prompt": [1, -2]})[0] == 400
    assert post(cluster, "/v1/completions", {"prompt": "x", "stop": [1, 2]})[0] == 400
    assert post(cluster, "/v1/completions", {"prompt": "x", "logit_bias": {"abc": 1}})[0] == 400


def test_curl_stream(cluster):
    p = subprocess.run(["curl", "-sN", cluster.base + "/v1/chat/completions", "-H", "Content-Type: application/json",
                        "-d", json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
                                          "stream": True, "temperature": 0})],
                       capture_output=True, text=True, timeout=60, check=True)
    events = [line[6:] for line in p.stdout.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"


def test_disconnect_cancels(cluster):
    body = json.dumps({"messages": [{"role": "user", "content": "Go on forever."}], "max_tokens": 3000,
                       "stream": True, "temperature": 0, "chat_template_kwargs": {"enable_thinking": False}})
    s = socket.create_connection(("127.0.0.1", cluster.port))
    s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
    got = b""
    while got.count(b"data: ") < 5:
        got += s.recv(4096)
    s.close()
    deadline = time.time() + 30
    while time.time() < deadline:
        st = cluster.stats()
        if st["running"] == 0 and all(w["blocks_used"] == w["blocks_cached"] for w in st["workers"]):
            break
        time.sleep(0.1)
    assert st["running"] == 0, st
    assert st["generated_tokens"] < 2500  # it stopped long before max_tokens


def test_api_key_and_overload(bin_dir, ref_dir, tmp_path):
    c = FullCluster(bin_dir, ref_dir / "tinyA-bf16.gguf", tmp_path / "k", workers=1, kv_tokens=2048,
                    sched_args=["--max-waiting", "1", "--max-running", "1"], gateway_args=["--api-key", "sekret"])
    try:
        bad = openai.OpenAI(base_url=c.base + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=c.base + "/v1", api_key="sekret", max_retries=0, timeout=120)
        assert good.models.list().data[0].id == "tinyA"
        statuses = []

        def one():
            try:
                good.chat.completions.create(model="tinyA", messages=[{"role": "user", "content": "x"}],
                                             max_tokens=40, temperature=0)
                statuses.append(200)
            except openai.APIStatusError as e:
                statuses.append(e.status_code)

        threads = [threading.Thread(target=one) for _ in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert 200 in statuses and set(statuses) <= {200, 503} and 503 in statuses, statuses
        with urllib.request.urlopen(c.base + "/metrics") as r:
            text = r.read().decode()
        assert 'inferno_requests_total{code="503"}' in text and "inferno_time_to_first_token_seconds_bucket" in text
        assert "inferno_kv_blocks_total{worker=" in text and "inferno_step_seconds_count" in text
        # a request is counted before its answer goes out: a client that has
        # its answer always finds it in the next /metrics
        def count_401():
            with urllib.request.urlopen(c.base + "/metrics") as r:
                m = re.search(r'^inferno_requests_total\{code="401"\} (\d+)$', r.read().decode(), re.M)
            return int(m.group(1)) if m else 0

        for i in range(10):
            before = count_401()
            with pytest.raises(openai.AuthenticationError):
                bad.models.list()
            assert count_401() == before + 1
    finally:
        assert all(code == 0 for code in c.stop()), c.logs()


def test_ignore_eos(cluster, ref_dir):
    import gguf
    field = gguf.GGUFReader(ref_dir / "tinyA-bf16.gguf").fields["tokenizer.ggml.eos_token_id"]
    eos = int(field.parts[field.data[0]][0])
    # the bias makes the end token the only choice: the reply ends at once, unless ignore_eos
    body = {"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "logit_bias": {str(eos): 100}}
    code, r = post(cluster, "/v1/completions", body)
    assert code == 200 and r["choices"][0]["finish_reason"] == "stop" and r["usage"]["completion_tokens"] <= 1, r
    code, r = post(cluster, "/v1/completions", {**body, "ignore_eos": True})
    assert code == 200 and r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 12, r
    code, r = post(cluster, "/v1/completions", {**body, "ignore_eos": "yes"})
    assert code == 400 and r["error"]["param"] == "ignore_eos"
