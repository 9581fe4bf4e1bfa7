"""Starting inferno processes for system tests: a scheduler and CPU workers
on a reference model, in a private directory (ipc:// sockets, logs), and
talking to the scheduler through the sched-submit tool; or a whole cluster
under the supervisor, deploy/inferno (Deploy)."""
import json
import os
import pathlib
import signal
import subprocess
import time

import pytest

INFERNO = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "inferno"


class Cluster:
    def __init__(self, bin_dir, model, workdir, workers=1, kv_tokens=4096, block_size=16, sched_args=()):
        self.bin_dir = pathlib.Path(bin_dir)
        self.model = model
        self.dir = pathlib.Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.url = f"ipc://{self.dir}/scheduler.ipc"
        self.kv_tokens, self.block_size = kv_tokens, block_size
        self.sched_args = list(sched_args)
        self.scheduler = None
        self.workers = {}
        self.start_scheduler()
        for i in range(workers):
            self.start_worker(i)
        self.wait_workers(workers)

    def _spawn(self, name, args):
        log = open(self.dir / f"{name}.log", "ab")
        return subprocess.Popen([str(a) for a in args], stdout=log, stderr=subprocess.STDOUT)

    def start_scheduler(self):
        self.scheduler = self._spawn("scheduler", [self.bin_dir / "scheduler-svc", "--listen", self.url,
                                                   *self.sched_args])

    def start_worker(self, i):
        self.workers[i] = self._spawn(f"worker-{i}", [
            self.bin_dir / "inferno-worker-cpu", "--model", self.model, "--listen", f"ipc://{self.dir}/worker-{i}.ipc",
            "--scheduler", self.url, "--threads", "1", "--kv-tokens", self.kv_tokens,
            "--block-size", self.block_size])

    def kill(self, proc, sig=signal.SIGKILL):
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def submit_cmd(self, *args):
        return [str(self.bin_dir / "sched-submit"), "--scheduler", self.url, *map(str, args)]

    def wait_workers(self, n, timeout=60):
        subprocess.run(self.submit_cmd("--wait-workers", n, "--timeout", timeout), check=True, timeout=timeout + 10)

    def stats(self):
        p = subprocess.run(self.submit_cmd("--stats"), capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    def write_requests(self, requests, name="requests.jsonl"):
        path = self.dir / name
        path.write_text("".join(json.dumps(r) + "\n" for r in requests))
        return path

    def run(self, requests, timeout=300):
        """Runs the requests concurrently; one result dict per request."""
        path = self.write_requests(requests)
        p = subprocess.run(self.submit_cmd("--requests", path), capture_output=True, text=True, timeout=timeout)
        assert p.returncode == 0, p.stderr
        return [json.loads(line) for line in p.stdout.splitlines()]

    def start_run(self, requests, name="bg.jsonl"):
        path = self.write_requests(requests, name)
        return subprocess.Popen(self.submit_cmd("--requests", path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def logs(self):
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.dir.glob("*.log")))

    def stop(self):
        procs = [*self.workers.values(), self.scheduler]
        for p in procs:
            if p and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            if p:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        return [p.returncode for p in procs if p]


def generate_alone(bin_dir, model, prompt_ids, max_tokens):
    """Greedy ids from model-generate: the request run alone, in process."""
    p = subprocess.run([str(pathlib.Path(bin_dir) / "model-generate"), "--model", str(model), "--prompt-ids",
                        ",".join(map(str, prompt_ids)), "--max-tokens", str(max_tokens), "--print-ids",
                        "--threads", "1"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    line = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
    return [int(x) for x in line.split(",") if x]


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FullCluster(Cluster):
    """Scheduler, workers, tokenizer-svc and the gateway on a free port."""

    def __init__(self, bin_dir, model, workdir, workers=1, gateway_args=(), **kw):
        self.gateway_args = list(gateway_args)
        self.port = free_port()
        super().__init__(bin_dir, model, workdir, workers=workers, **kw)
        self.tk_url = f"ipc://{self.dir}/tokenizer.ipc"
        self.tokenizer = self._spawn("tokenizer", [self.bin_dir / "tokenizer-svc", "--model", model, "--listen",
                                                   self.tk_url])
        self.gateway = self._spawn("gateway", [self.bin_dir / "inferno-gateway", "--model", model, "--port", self.port,
                                               "--scheduler", self.url, "--tokenizer", self.tk_url,
                                               "--model-name", "tinyA", *self.gateway_args])
        self.base = f"http://127.0.0.1:{self.port}"
        self.wait_healthy()

    def wait_healthy(self, timeout=60):
        import urllib.request
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except Exception:
                pass
            time.sleep(0.1)
        raise RuntimeError("cluster not healthy:\n" + self.logs())

    def stop(self):
        codes = []
        for p in (self.gateway, self.tokenizer):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
            codes.append(p.returncode)
        return codes + super().stop()


class Deploy:
    """One cluster under deploy/inferno, in its own run directory and port."""

    def __init__(self, bin_dir, model, run_dir):
        self.run_dir = pathlib.Path(run_dir)
        self.port = free_port()
        self.env = dict(os.environ, INFERNO_CONF="/dev/null", INFERNO_RUN_DIR=str(run_dir),
                        INFERNO_BIN_DIR=str(bin_dir), INFERNO_PORT=str(self.port), INFERNO_START_TIMEOUT="120",
                        INFERNO_DRAIN_TIMEOUT="60")
        self.model = model

    def cmd(self, *args, check=True, timeout=240):
        p = subprocess.run([str(INFERNO), *map(str, args)], env=self.env, capture_output=True, text=True,
                           timeout=timeout)
        if check and p.returncode != 0:
            pytest.fail(f"inferno {' '.join(map(str, args))} exited {p.returncode}:\n{p.stdout}{p.stderr}\n"
                        + self.logs())
        return p

    def start(self, workers):
        return self.cmd("start", "--model", self.model, "--workers", workers, "--threads", 1)

    def status(self):
        """{name: (pid, state)} and the exit status."""
        p = self.cmd("status", check=False)
        rows = {}
        for line in p.stdout.splitlines():
            f = line.split()
            if len(f) >= 3:
                rows[f[0]] = (f[1], f[2])
        return rows, p.returncode, p.stdout

    def wait_healthy(self, names, changed=None, timeout=120):
        """Until exactly `names` are listed and healthy (and the one in
        `changed`, a (name, old pid) pair, has a new pid)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            rows, rc, out = self.status()
            if rc == 0 and list(rows) == names and (not changed or rows[changed[0]][0] != changed[1]):
                return rows
            time.sleep(0.3)
        pytest.fail(f"not healthy after {timeout}s:\n{out}\n{self.logs()}")

    def pid(self, name):
        return int((self.run_dir / f"{name}.pid").read_text())

    def logs(self):
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-2500:]}"
                         for p in sorted(self.run_dir.glob("*.log")))

    def stop(self):
        self.cmd("stop", check=False)

    def sanitizer_reports(self):
        return sanitizer_reports(self.run_dir)


def sanitizer_reports(log_dir):
    """ASan/UBSan/LSan reports in any process's log there (the test build is sanitized)."""
    marks = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")
    return [f"{p.name}: {line}" for p in pathlib.Path(log_dir).glob("*.log")
            for line in p.read_text(errors="replace").splitlines() if any(m in line for m in marks)]
