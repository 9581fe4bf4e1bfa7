"""bench/loadgen.py against a live cluster on tinyA: its closed and open
loops, the shared-prefix workload, its JSON, table and plot, and its counts
checked against what the server itself reports in /metrics."""
import json
import pathlib
import re
import subprocess
import sys
import urllib.request

import pytest

from cluster import FullCluster

LOADGEN = pathlib.Path(__file__).resolve().parents[2] / "bench" / "loadgen.py"


@pytest.fixture(scope="module")
def cluster(bin_dir, ref_dir, tmp_path_factory):
    c = FullCluster(bin_dir, ref_dir / "tinyA-bf16.gguf", tmp_path_factory.mktemp("lg"), workers=1, kv_tokens=8192)
    yield c
    assert all(code == 0 for code in c.stop()), c.logs()


def loadgen(*args, check=True):
    p = subprocess.run([sys.executable, str(LOADGEN), *map(str, args)], capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        pytest.fail(f"loadgen {' '.join(map(str, args))} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def metric(cluster, name):
    with urllib.request.urlopen(cluster.base + "/metrics", timeout=30) as r:
        text = r.read().decode()
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def ordered(p):
    return p["p50"] <= p["p90"] <= p["p99"] <= p["max"]


def test_closed_loop_counts_match_the_server(cluster, tmp_path):
    before = metric(cluster, 'inferno_requests_total{code="200"}')
    out = tmp_path / "closed.json"
    p = loadgen("run", "--target", f"inferno={cluster.base}", "--concurrency", "1,3", "--requests", 6,
                "--prompt-len", "uniform:10:40", "--output-len", 12, "--warmup", 1, "--json", out,
                "--plot", tmp_path / "closed.png")
    report = json.loads(out.read_text())
    assert [r.get("concurrency") for r in report["runs"]] == [1, 3]
    for run in report["runs"]:
        s = run["summary"]
        assert s["requests"] == s["ok"] == 6 and not s["errors"] and s["short_replies"] == 0, s
        for r in run["requests"]:
            # ignore_eos: exactly the asked length; every token streamed
            assert r["completion_tokens"] == 12 and len(r["itl"]) <= 11, r
            assert 0 < r["ttft"] <= r["e2e"] and r["prompt_tokens"] > 10
        assert ordered(s["ttft_s"]) and ordered(s["itl_s"]) and ordered(s["e2e_s"])
        assert s["output_token_throughput"] == pytest.approx(72 / s["duration_s"])
        assert s["prefix_hit_rate"] < 0.5  # distinct prompts at each load point
    # as the server counted them: 12 measured, 1 warm-up, loadgen's /v1/models and our first /metrics
    assert metric(cluster, 'inferno_requests_total{code="200"}') - before == 12 + 1 + 1 + 1
    assert (tmp_path / "closed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| inferno | c=3 |" in p.stdout


def test_shared_prefix_hits_the_cache(cluster, tmp_path):
    out = tmp_path / "chat.json"
    loadgen("run", "--target", f"inferno={cluster.base}", "--workload", "shared-prefix", "--concurrency", 3,
            "--sessions", 3, "--turns", 3, "--prefix-len", 300, "--prompt-len", 20, "--output-len", 8,
            "--warmup", 0, "--json", out)
    run = json.loads(out.read_text())["runs"][0]
    assert run["summary"]["ok"] == 9
    # each conversation's turns grow: the whole history is sent again
    for conv in range(3):
        lengths = [r["prompt_tokens"] for r in run["requests"] if r["conversation"] == conv]
        assert len(lengths) == 3 and lengths == sorted(lengths) and lengths[0] > 300, lengths
    # the system prompt is computed once, later turns reuse their own history
    assert run["summary"]["prefix_hit_rate"] > 0.6, run["summary"]


def test_open_loop_and_side_by_side_table(cluster, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    loadgen("run", "--target", f"one={cluster.base}", "--target", f"two={cluster.base}/", "--rate", "20",
            "--requests", 5, "--output-len", "normal:8:2", "--prompt-len", 16, "--json", a)
    loadgen("run", "--target", f"three={cluster.base}", "--concurrency", 2, "--requests", 2, "--output-len", 4,
            "--json", b)
    runs = json.loads(a.read_text())["runs"]
    assert [r["target"] for r in runs] == ["one", "two"] and all(r["rate"] == 20 for r in runs)
    assert all(r["summary"]["ok"] == 5 for r in runs)
    table = loadgen("table", a, b).stdout
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:]] == ["one", "two", "three"]
    loadgen("plot", a, b, "--out", tmp_path / "ab.png")
    assert (tmp_path / "ab.png").stat().st_size > 1000


def test_errors_are_reported_not_hidden(cluster, tmp_path):
    # a server that is not there: the warm-up fails with a message and exit 1
    p = loadgen("run", "--target", "gone=http://127.0.0.1:9", "--requests", 1, check=False)
    assert p.returncode == 1 and "warm-up failed" in p.stderr
    # a wrong model name: every request is a 404, counted as such, exit 3
    out = tmp_path / "e.json"
    p = loadgen("run", "--target", f"inferno={cluster.base}", "--model", "nope", "--warmup", 0, "--requests", 2,
                "--json", out, check=False)
    assert p.returncode == 3
    assert json.loads(out.read_text())["runs"][0]["summary"]["errors"] == {"404": 2}
