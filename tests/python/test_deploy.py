"""deploy/inferno, the supervisor, end to end on tinyA: start and status, scale
up and down under a steady stream of requests (none may fail), kill -9 of each
process type under load (the supervisor restarts it; requests in flight
complete with the right text or end with a clear error, never hang), a start
that fails names the process, and the foreground `run` stops every process
on Ctrl-C."""
import http.client
import json
import os
import pathlib
import signal
import subprocess
import threading
import time

import pytest

from cluster import INFERNO, Deploy, free_port

NAMES = ["gateway", "tokenizer", "scheduler"]
PROMPTS = ["Say something.", "Count to five.", "What is a GPU?", "Tell me a story about a cat.", "hello"]
CLIENT_TIMEOUT = 90  # a request still unanswered after this is a hang


def chat(port, prompt, stream, max_tokens=12):
    """("ok", text) | ("error", why) | ("hang", why)."""
    body = json.dumps({"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                       "temperature": 0, "stream": stream})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    try:
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            return "error", f"HTTP {r.status}: {r.read()[:200]!r}"
        if not stream:
            c = json.loads(r.read())["choices"][0]
            return ("ok", c["message"]["content"]) if c["finish_reason"] else ("error", "no finish_reason")
        text, done, finished = "", False, False
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            ev = json.loads(line[6:])
            if "error" in ev:
                return "error", f"stream error: {ev['error'].get('message')}"
            for c in ev.get("choices", []):
                text += c.get("delta", {}).get("content") or ""
                finished = finished or bool(c.get("finish_reason"))
        return ("ok", text) if done and finished else ("error", "stream ended early")
    except TimeoutError as e:
        return "hang", f"no answer in {CLIENT_TIMEOUT}s: {e}"
    except (OSError, http.client.HTTPException, ValueError) as e:
        return "error", f"{type(e).__name__}: {e}"
    finally:
        conn.close()


class Load:
    """Client threads sending greedy chat requests back to back (half of them
    streamed) until stopped; every result is kept with its times."""

    def __init__(self, port, threads=3):
        self.port, self.results, self.stopping = port, [], threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(threads)]
        for t in self.threads:
            t.start()

    def _client(self, i):
        k = 0
        while not self.stopping.is_set():
            prompt = PROMPTS[(i + k) % len(PROMPTS)]
            t0 = time.time()
            kind, text = chat(self.port, prompt, stream=(i + k) % 2 == 0)
            with self.lock:
                self.results.append((t0, time.time(), prompt, kind, text))
            k += 1
            if kind != "ok":
                time.sleep(0.1)  # as a client backs off; keeps a refused connection from spinning

    def count(self):
        with self.lock:
            return len(self.results)

    def wait_for(self, n, timeout=120):
        deadline = time.time() + timeout
        while self.count() < n and time.time() < deadline:
            time.sleep(0.1)
        assert self.count() >= n, f"only {self.count()} requests answered in {timeout}s"

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=CLIENT_TIMEOUT + 30)
        assert not any(t.is_alive() for t in self.threads), "a client is stuck"
        return self.results


@pytest.fixture
def deploy(bin_dir, ref_dir, tmp_path):
    d = Deploy(bin_dir, ref_dir / "tinyA-bf16.gguf", tmp_path / "run")
    yield d
    d.stop()
    assert not d.sanitizer_reports(), d.sanitizer_reports()


def expected_texts(port):
    """Greedy text of each prompt from the quiet cluster, streamed and not."""
    out = {}
    for p in PROMPTS:
        a, b = chat(port, p, stream=False), chat(port, p, stream=True)
        assert a[0] == "ok" and a == b, (a, b)
        out[p] = a[1]
    return out


def gone(pid):
    """The process has exited (a zombie counts: orphans wait for init to reap them)."""
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def workers(n):
    return NAMES + [f"worker-{i}" for i in range(n)]


def test_start_status_scale_under_load(deploy):
    deploy.start(2)
    rows, rc, out = deploy.status()
    assert rc == 0 and list(rows) == workers(2), out
    assert all(state == "healthy" for _, state in rows.values()), out
    expected = expected_texts(deploy.port)

    load = Load(deploy.port)
    load.wait_for(6)
    deploy.cmd("scale", 3)
    rows = deploy.wait_healthy(workers(3))
    n = load.count()
    load.wait_for(n + 6)
    deploy.cmd("scale", 1)
    deploy.wait_healthy(workers(1))
    n = load.count()
    load.wait_for(n + 6)
    results = load.stop()

    failed = [r for r in results if r[3] != "ok"]
    assert not failed, f"{len(failed)} of {len(results)} requests failed: {failed[:5]}\n{deploy.logs()}"
    wrong = [r for r in results if r[4] != expected[r[2]]]
    assert not wrong, f"{len(wrong)} answers differ from the quiet cluster's: {wrong[:3]}"
    log = (deploy.run_dir / "supervisor.log").read_text()
    assert log.count("left after draining (status 0)") == 2, log  # worker-1 and worker-2, clean exits


def test_kill_each_process_is_recovered(deploy):
    deploy.start(2)
    expected = expected_texts(deploy.port)
    load = Load(deploy.port)
    load.wait_for(4)
    for name in ["worker-0", "tokenizer", "scheduler", "gateway", "worker-1"]:
        old = deploy.pid(name)
        os.kill(old, signal.SIGKILL)
        deploy.wait_healthy(workers(2), changed=(name, str(old)))
        n = load.count()
        load.wait_for(n + 4)
        # the restarted cluster answers a new request correctly
        assert chat(deploy.port, PROMPTS[0], stream=True) == ("ok", expected[PROMPTS[0]]), f"after killing {name}"
    results = load.stop()

    hangs = [r for r in results if r[3] == "hang"]
    assert not hangs, hangs
    wrong = [r for r in results if r[3] == "ok" and r[4] != expected[r[2]]]
    assert not wrong, f"completed with the wrong text: {wrong[:3]}"
    ok = sum(r[3] == "ok" for r in results)
    assert ok >= 20, f"only {ok} of {len(results)} requests completed"
    log = (deploy.run_dir / "supervisor.log").read_text()
    for name in ["worker-0", "tokenizer", "scheduler", "gateway", "worker-1"]:
        assert f"{name} (pid" in log and "killed by signal 9" in log, log


def test_stop_after_the_supervisor_was_killed(deploy):
    deploy.start(1)
    rows, rc, out = deploy.status()
    pids = [int(pid) for pid, _ in rows.values()]
    os.kill(int((deploy.run_dir / "supervisor.pid").read_text()), signal.SIGKILL)
    p = deploy.cmd("stop")
    assert "stopped 4 process(es)" in p.stdout, p.stdout
    assert all(gone(pid) for pid in pids)
    deploy.start(1)  # and the run directory is usable again


def test_failed_start_names_the_process(bin_dir, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    d = Deploy(bin_dir, bad, tmp_path / "run")
    p = d.cmd("start", "--model", bad, check=False)
    assert p.returncode == 1
    assert "did not come up" in p.stderr and any(n in p.stderr for n in ["tokenizer", "worker-0", "gateway"]), \
        p.stderr
    rows, rc, out = d.status()
    assert rc == 3 and "not running" in out  # the failed start left nothing behind
    p = d.cmd("start", "--model", tmp_path / "missing.gguf", check=False)
    assert p.returncode == 1 and "no such file" in p.stderr


def test_run_in_foreground_stops_on_ctrl_c(deploy):
    p = subprocess.Popen([str(INFERNO), "run", "--model", deploy.model, "--workers", "1", "--threads", "1"],
                         env=deploy.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = ""
        for line in p.stdout:
            banner += line
            if "Ctrl-C stops" in line:
                break
        assert f"http://127.0.0.1:{deploy.port}" in banner and "curl" in banner, banner
        rows, rc, out = deploy.status()
        assert rc == 0 and list(rows) == workers(1), out
        pids = [int(pid) for pid, _ in rows.values()]
        assert chat(deploy.port, "hello", stream=False)[0] == "ok"
        p.send_signal(signal.SIGINT)
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert all(gone(pid) for pid in pids)
    assert deploy.status()[1] == 3


def test_workers_join_over_tcp(deploy, bin_dir, tmp_path):
    """A second run directory on the same host plays "another host": workers
    only, registering over tcp:// with the first cluster's scheduler."""
    sched_port, worker_port = free_port(), free_port()
    deploy.env["INFERNO_SCHEDULER_TCP"] = f"tcp://127.0.0.1:{sched_port}"
    deploy.start(1)
    remote = Deploy(bin_dir, deploy.model, tmp_path / "remote-run")
    remote.env["INFERNO_WORKER_PORT"] = str(worker_port)
    try:
        remote.cmd("start", "--model", deploy.model, "--workers", 1, "--threads", 1,
                   "--join", f"tcp://127.0.0.1:{sched_port}", "--advertise-host", "127.0.0.1")
        rows, rc, out = remote.status()
        assert rc == 0 and list(rows) == ["worker-0"], out
        rows, rc, out = deploy.status()
        assert rc == 0 and "2 workers" in out, out
        assert chat(deploy.port, "hello", stream=False)[0] == "ok"
        remote.cmd("stop")
        deadline = time.time() + 30  # the scheduler drops the worker that left
        while "1 workers" not in deploy.status()[2] and time.time() < deadline:
            time.sleep(0.3)
        assert "1 workers" in deploy.status()[2]
    finally:
        remote.stop()
