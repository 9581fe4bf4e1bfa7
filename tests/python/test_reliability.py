"""Failure behaviour, bounded in time, loopback only, on tinyA: a soak of many
concurrent streams after which memory and KV blocks are back at their idle
level; slow, stalled and disconnecting clients; a full queue answered with
503 while the requests in flight finish; malformed HTTP, JSON and protobuf
on the wire. kill -9 of each process under load is test_deploy.py's
test_kill_each_process_is_recovered; the parsers' fuzzers run in
scripts/run-tests.sh. In CI every process here is the ASan/UBSan build, and
a sanitizer report in any log fails the test."""
import json
import os
import random
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

from cluster import FullCluster, sanitizer_reports

CHAT = "/v1/chat/completions"


def chat_body(text, max_tokens=16, stream=True, **kw):
    return {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "temperature": 0,
            "stream": stream, "ignore_eos": True, "chat_template_kwargs": {"enable_thinking": False}, **kw}


def http(c, path, body=None, timeout=120):
    """(status, headers, body bytes); a streamed body is read whole."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(c.base + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def sse_tokens(raw):
    """Content pieces of a finished SSE stream; asserts it ended with [DONE]."""
    events = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", raw[-300:]
    return [json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1]
            if json.loads(e)["choices"]]


def raw_request(c, data):
    s = socket.create_connection(("127.0.0.1", c.port), timeout=30)
    s.sendall(data)
    return s


def post_bytes(path, body, extra=""):
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def wait_idle(c, timeout=60):
    """Until nothing runs or waits and the KV pool holds only cached prefixes."""
    deadline = time.time() + timeout
    while True:
        st = c.stats()
        if st["running"] == 0 and st["waiting"] == 0 and all(
                w["blocks_used"] == w["blocks_cached"] for w in st["workers"]):
            return st
        if time.time() > deadline:
            pytest.fail(f"not idle after {timeout}s: {st}\n{c.logs()}")
        time.sleep(0.1)


def anon_kib(pid):
    """Resident anonymous memory (the heap, stacks, KV cache): what a leak
    grows. Not VmRSS: that also counts the model file's mapped pages, which
    an embedding lookup maps as new token ids come up and the kernel may
    reclaim at any time, so it drifts by megabytes without any leak."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no RssAnon")


@pytest.fixture
def make_cluster(bin_dir, ref_dir, tmp_path, monkeypatch):
    made = []

    def make(asan_options="", **kw):
        monkeypatch.setenv("ASAN_OPTIONS", os.environ.get("ASAN_OPTIONS", "") + asan_options)
        c = FullCluster(bin_dir, ref_dir / "tinyA-bf16.gguf", tmp_path / f"c{len(made)}", **kw)
        made.append(c)
        return c
    yield make
    for c in made:
        codes = c.stop()
        assert all(code == 0 for code in codes), f"exit codes {codes}\n{c.logs()}"
        assert not sanitizer_reports(c.dir), sanitizer_reports(c.dir)


def test_soak_returns_to_idle(make_cluster):
    """Rounds of 32 concurrent clients (streams, plain requests, clients
    that hang up mid-stream); after each, the cluster must be idle again, and
    its memory must not grow from round to round. Under ASan, freed memory
    is kept in a quarantine and every allocation's stack in a depot that only
    grows, so both are turned off here to let resident memory follow the heap (LSan at
    exit still checks for leaks)."""
    # at most 32 sequences a step: a client that hung up can still hold a
    # place for a step while its thread starts the next request, so without
    # the bound a round could batch more than the warm-up did
    c = make_cluster(workers=1, kv_tokens=8192, sched_args=["--max-running", "32"], gateway_args=["--threads", "64"],
                     asan_options=":quarantine_size_mb=0:thread_local_quarantine_size_kb=0:malloc_context_size=0")
    procs = {"gateway": c.gateway, "tokenizer": c.tokenizer, "scheduler": c.scheduler, "worker": c.workers[0]}

    def client(rng, i, results):
        text = " ".join(rng.choice(["red", "blue", "cat", "ran", "far", "away", "sun"]) for _ in range(rng.randint(5, 60)))
        kind = i % 8
        try:
            if kind == 7:  # hangs up after a few events
                body = json.dumps(chat_body(text, max_tokens=200)).encode()
                s = raw_request(c, post_bytes(CHAT, body))
                got = b""
                while got.count(b"data: ") < 3:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    got += chunk
                s.close()
                results.append("hung up")
            else:
                n = rng.randint(1, 24)
                code, _, raw = http(c, CHAT, chat_body(text, max_tokens=n, stream=kind != 6))
                assert code == 200, raw
                got = sse_tokens(raw) if kind != 6 else json.loads(raw)["choices"][0]["message"]["content"]
                results.append("ok" if got is not None else "empty")
        except Exception as e:  # noqa: BLE001  (reported below, with the others)
            results.append(f"{type(e).__name__}: {e}")

    def round_(seed, n=64, concurrency=32):
        rng = random.Random(seed)
        results, todo = [], list(range(n))
        lock = threading.Lock()

        def worker():
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop()
                client(random.Random(rng.random() + i), i, results)
        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        bad = [r for r in results if r not in ("ok", "hung up")]
        assert len(results) == n and not bad, bad[:5]
        st = wait_idle(c)
        return {name: anon_kib(p.pid) for name, p in procs.items()}, st

    def full_batch():
        """64 requests released at once, long enough to overlap: every one of
        the gateway's 64 threads serves one, and the worker's per-row buffers
        (logits, sampling) reach the largest batch the rounds can make
        (--max-running 32), so that neither counts as growth later. The
        scheduler's peak shows the full batch happened."""
        start, peak, done = threading.Barrier(65), [0], threading.Event()

        def one(i):
            start.wait()
            code, _, raw = http(c, CHAT, chat_body(f"warm {i}", max_tokens=160, stream=False))
            assert code == 200, raw

        def watch():
            start.wait()
            while not done.is_set():
                peak[0] = max(peak[0], c.stats()["running"])
        threads = [threading.Thread(target=one, args=(i,)) for i in range(64)]
        watcher = threading.Thread(target=watch)
        [t.start() for t in threads + [watcher]]
        [t.join() for t in threads]
        done.set()
        watcher.join()
        assert peak[0] == 32, f"the warm-up batch peaked at {peak[0]} sequences, not 32"
        wait_idle(c)

    full_batch()
    round_(0)  # warm: caches, thread pools and allocator arenas reach their working size
    base, st0 = round_(1)
    for seed in (2, 3, 4):
        rss, st = round_(seed)
    assert st["requests"] - st0["requests"] == 3 * 64, (st0, st)  # every client's request reached the scheduler
    # measured: 1-5 KiB per request in a release build, up to 16 KiB under
    # ASan (allocator caches); a leak of each request's body, prompt or
    # events would be tens of KiB
    per_request = {k: (rss[k] - base[k]) / (3 * 64) for k in rss}
    assert all(g < 32 for g in per_request.values()), f"anonymous RSS growth, KiB per request: {per_request} (base {base})"
    # and the cluster still answers exactly as before
    code, _, raw = http(c, CHAT, chat_body("The same question", max_tokens=8, stream=False))
    code2, _, raw2 = http(c, CHAT, chat_body("The same question", max_tokens=8, stream=False))
    assert code == code2 == 200
    assert json.loads(raw)["choices"][0]["message"] == json.loads(raw2)["choices"][0]["message"]


def test_slow_and_stalled_clients(make_cluster):
    """A reader that takes its time gets every token; clients that never
    finish sending their request hold a connection only for --io-timeout, and
    others are served meanwhile."""
    c = make_cluster(workers=1, gateway_args=["--threads", "4", "--io-timeout", "2"])
    _, _, whole = http(c, CHAT, chat_body("Tell me a story", max_tokens=64))
    expected = sse_tokens(whole)

    slow = raw_request(c, post_bytes(CHAT, json.dumps(chat_body("Tell me a story", max_tokens=64)).encode()))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    got = b""

    def read_slowly():
        nonlocal got
        while True:
            chunk = slow.recv(256)
            if not chunk:
                return
            got += chunk
            time.sleep(0.02)
    reader = threading.Thread(target=read_slowly)
    reader.start()

    # more stalled clients than the gateway has threads: half a request line, half a body
    stalled = [raw_request(c, b"POST /v1/chat/comp") for _ in range(3)]
    stalled += [raw_request(c, post_bytes(CHAT, b'{"messages": [')[:-5]) for _ in range(3)]
    t = time.time()
    code, _, raw = http(c, CHAT, chat_body("Hello", max_tokens=4, stream=False), timeout=60)
    assert code == 200, raw
    served_after = time.time() - t
    for s in stalled:  # each is dropped once it has stalled for the io timeout (socket.timeout if not)
        s.settimeout(15)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
        assert reply == b"" or reply[:10] in (b"HTTP/1.0 4", b"HTTP/1.1 4"), reply[:200]
        s.close()
    reader.join(timeout=120)
    assert not reader.is_alive()
    body = got.split(b"\r\n\r\n", 1)[1]
    # a chunked body: keep the data lines only
    assert sse_tokens(b"\n".join(line for line in body.split(b"\r\n") if line.startswith(b"data: "))) == expected
    assert served_after < 30, served_after
    wait_idle(c)


def test_disconnects_at_every_stage_free_everything(make_cluster):
    c = make_cluster(workers=1, kv_tokens=4096)
    body = json.dumps(chat_body("Go on and on", max_tokens=3000)).encode()
    plain = json.dumps(chat_body("Go on and on", max_tokens=300, stream=False)).encode()
    full = post_bytes(CHAT, body)
    socks = [raw_request(c, full[:len(full) // 2]),           # mid-body
             raw_request(c, full),                            # before the first byte back
             raw_request(c, post_bytes(CHAT, plain))]         # a plain request, closed while it runs
    for _ in range(5):                                        # mid-stream
        s = raw_request(c, full)
        got = b""
        while got.count(b"data: ") < 3:
            got += s.recv(4096)
        socks.append(s)
    time.sleep(0.3)
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset, not FIN
        s.close()
    st = wait_idle(c, timeout=60)
    assert st["generated_tokens"] < 5 * 3000, st  # the streams stopped long before their max_tokens
    code, _, raw = http(c, CHAT, chat_body("Still here?", max_tokens=4, stream=False))
    assert code == 200, raw


def test_full_queue_is_503_while_in_flight_finish(make_cluster):
    c = make_cluster(workers=1, sched_args=["--max-running", "2", "--max-waiting", "2"])
    results = [None] * 12

    def one(i):
        results[i] = http(c, CHAT, chat_body(f"Request {i}", max_tokens=48))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    accepted = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] != 200]
    assert accepted and refused, [r[0] for r in results]
    for code, headers, raw in refused:
        err = json.loads(raw)["error"]
        assert code == 503 and err["type"] == "server_overloaded" and headers.get("Retry-After") == "1", raw
    for _, _, raw in accepted:  # every accepted request ran to its full length
        assert len("".join(sse_tokens(raw))) > 0 and json.loads(
            [line for line in raw.decode().splitlines() if line.startswith("data: {")][-1][6:]
        )["choices"][0]["finish_reason"] == "length"
    wait_idle(c)


MALFORMED_HTTP = [
    b"GARBAGE\r\n\r\n",
    b"\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET /v1/models HTTP/1.0\r\n\r\n",
    b"G\x00T /v1/\x00models HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /v1/%ff%00%zz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n{}",
    b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n{}",
    b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 1x\r\n\r\n{}",
    b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n{}\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 40000 + b"\r\n\r\n",
    b"GET /health HTTP/1.1\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(2000)) + b"\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n",
    b"PUT /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    b"\xff\xfe\xfd" * 100,
]


def test_malformed_http_json_and_protobuf(make_cluster, bin_dir):
    c = make_cluster(workers=1)
    code, _, raw = http(c, CHAT, chat_body("Reference", max_tokens=8, stream=False))
    expected = json.loads(raw)["choices"][0]["message"]["content"]
    rng = random.Random(7)

    # HTTP: whatever comes back is a 4xx, a complete answer or a closed connection; never a 5xx
    for data in MALFORMED_HTTP + [bytes(rng.randrange(256) for _ in range(rng.randint(1, 600))) for _ in range(40)]:
        s = raw_request(c, data)
        s.settimeout(30)
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
                if reply.startswith(b"HTTP/") and b"\r\n\r\n" in reply and b"Connection: close" not in reply:
                    break
        except (ConnectionResetError, socket.timeout):
            pass
        s.close()
        status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.") else 0
        assert status < 500, (data[:80], reply[:200])

    # JSON: mutated bodies are answered, each with a JSON body, never a 5xx
    valid = json.dumps(chat_body("Mutate me", max_tokens=4, stream=False, stop=["x"], n=2, logprobs=True,
                                 top_logprobs=2, seed=3, logit_bias={"5": 1})).encode()
    odd = [None, -1, 0, 1e309, 2 ** 70, "", "x" * 3000, [], {}, [[[[]]]], True, {"a": [1, {"b": None}]}]
    keys = list(json.loads(valid))
    bodies = [b"[" * 100000, b'{"messages": ' + b"[" * 5000, b'{"a": "\\ud800"}', valid[:-1], valid + b"x"]
    for i in range(90):
        if i % 3 == 0:  # a byte-level mutation
            b = bytearray(valid)
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            bodies.append(bytes(b))
        else:  # a field with an odd value
            d = json.loads(valid)
            if i % 3 == 1:
                d[rng.choice(keys)] = rng.choice(odd)
            else:
                d["messages"][0][rng.choice(["role", "content", "name", "tool_calls"])] = rng.choice(odd)
            bodies.append(json.dumps(d).encode())
    for body in bodies:
        code, _, raw = http(c, CHAT, body)
        assert code in (200, 400, 413), (body[:120], code, raw[:200])
        json.loads(raw) if code != 200 or not raw.startswith(b"data:") else sse_tokens(raw)

    # protobuf on each service's socket: random bytes and random well-formed fields
    def random_proto():
        out = bytearray()
        for _ in range(rng.randint(0, 8)):
            field, wire = rng.randint(1, 20), rng.choice([0, 1, 2, 5])
            out.append((field << 3 | wire) & 0x7F)
            if wire == 0:
                out += bytes([0xFF] * rng.randint(0, 9) + [rng.randrange(128)])
            elif wire == 2:
                n = rng.choice([0, 1, 5, 300, 2 ** 31])
                v = n
                while v >= 0x80:
                    out.append(v & 0x7F | 0x80)
                    v >>= 7
                out.append(v)
                out += bytes(rng.randrange(256) for _ in range(min(n, 400)))
            else:
                out += bytes(rng.randrange(256) for _ in range(4 if wire == 5 else 8))
        return bytes(out)
    urls = [c.url, c.tk_url, f"ipc://{c.dir}/worker-0.ipc"]
    for url in urls:
        for i in range(30):
            msg = random_proto() if i % 2 else bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
            subprocess.run([str(bin_dir / "inferno-probe"), "--send-raw", url], input=msg, capture_output=True,
                           timeout=30)
    for p in (c.gateway, c.tokenizer, c.scheduler, c.workers[0]):
        assert p.poll() is None, c.logs()
    wait_idle(c)
    code, _, raw = http(c, CHAT, chat_body("Reference", max_tokens=8, stream=False))
    assert code == 200 and json.loads(raw)["choices"][0]["message"]["content"] == expected
