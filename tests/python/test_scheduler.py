"""scheduler-svc with real inferno-worker-cpu processes on tinyA: continuous
batching gives each request what it gets alone, prefixes are reused,
cancellation returns the KV pool, a dead worker's requests finish on
another, and the queue bound answers "overloaded"."""
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cluster import Cluster, generate_alone

VOCAB = 151936


@pytest.fixture(scope="module")
def model(ref_dir):
    return ref_dir / "tinyA-bf16.gguf"


def random_prompts(n, seed, lo=3, hi=120):
    rng = random.Random(seed)
    return [[rng.randrange(VOCAB - 300) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def expected(bin_dir, model, requests):
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda r: generate_alone(bin_dir, model, r["prompt_ids"], r["max_tokens"]), requests))


def idle_blocks(stats):
    """KV blocks held by anything but the prefix cache, over all workers."""
    return sum(w["blocks_used"] - w["blocks_cached"] for w in stats["workers"])


@pytest.fixture
def cluster_factory(bin_dir, model, tmp_path):
    made = []

    def make(**kw):
        c = Cluster(bin_dir, model, tmp_path / f"c{len(made)}", **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        codes = c.stop()
        # every process ends cleanly on SIGTERM (and ASan finds no leak)
        assert all(code in (0, -signal.SIGKILL) for code in codes), c.logs()


def test_32_concurrent_equal_alone(bin_dir, model, cluster_factory):
    prompts = random_prompts(32, seed=1)
    reqs = [{"prompt_ids": p, "max_tokens": 8 + i % 17} for i, p in enumerate(prompts)]
    want = expected(bin_dir, model, reqs)
    c = cluster_factory(workers=1, kv_tokens=8192)
    got = c.run(reqs)
    for r, w in zip(got, want):
        assert r["ids"] == w, (r, c.logs())
        assert r["finish"] in ("length", "stop")
        assert r["completion_tokens"] == len(w)
    st = c.stats()
    assert st["requests"] == 32 and st["running"] == 0 and st["waiting"] == 0
    assert idle_blocks(st) == 0


def test_preemption_keeps_outputs(bin_dir, model, cluster_factory):
    # a KV pool too small for all sequences at once: the scheduler must
    # preempt and recompute, and still give every request its own output
    prompts = random_prompts(12, seed=2, lo=40, hi=90)
    reqs = [{"prompt_ids": p, "max_tokens": 24} for p in prompts]
    want = expected(bin_dir, model, reqs)
    c = cluster_factory(workers=1, kv_tokens=512, block_size=16)
    got = c.run(reqs)
    assert [r["ids"] for r in got] == want, c.logs()
    st = c.stats()
    assert st["preemptions"] > 0
    assert idle_blocks(st) == 0


def test_shared_prefix_is_reused(bin_dir, model, cluster_factory):
    rng = random.Random(3)
    prefix = [rng.randrange(VOCAB - 300) for _ in range(300)]
    first = {"prompt_ids": prefix + [11, 12, 13], "max_tokens": 6}
    others = [{"prompt_ids": prefix + [rng.randrange(1000) for _ in range(5 + i)], "max_tokens": 6} for i in range(4)]
    want = expected(bin_dir, model, [first, *others])
    c = cluster_factory(workers=1)
    got = c.run([first])
    assert got[0]["ids"] == want[0] and got[0]["cached_tokens"] == 0
    before = c.stats()
    got = c.run(others)
    after = c.stats()
    for r, w in zip(got, want[1:]):
        assert r["ids"] == w
        # whole blocks of the shared prefix: 300 // 16 * 16 tokens
        assert r["cached_tokens"] == 288, r
    assert after["prefix_hit_tokens"] - before["prefix_hit_tokens"] == 4 * 288
    # the prefix was computed once: later prompts cost only their own tokens
    computed = after["prompt_tokens"] - before["prompt_tokens"] - (after["prefix_hit_tokens"] - before["prefix_hit_tokens"])
    assert computed == sum(len(r["prompt_ids"]) - 288 for r in others)


def test_cancel_returns_kv_pool(bin_dir, model, cluster_factory):
    c = cluster_factory(workers=1)
    idle = idle_blocks(c.stats())
    prompts = random_prompts(8, seed=4, lo=20, hi=60)
    got = c.run([{"prompt_ids": p, "max_tokens": 500, "cancel_after": 3} for p in prompts])
    for r in got:
        assert r["finish"] == "cancelled", r
        assert 3 <= len(r["ids"]) < 500
    time.sleep(0.2)
    st = c.stats()
    assert st["running"] == 0 and st["waiting"] == 0
    assert idle_blocks(st) == idle == 0


def test_killed_worker_loses_no_request(bin_dir, model, cluster_factory):
    prompts = random_prompts(16, seed=5, lo=10, hi=80)
    # long enough that the kill below lands while both workers are busy
    reqs = [{"prompt_ids": p, "max_tokens": 160} for p in prompts]
    want = expected(bin_dir, model, reqs)
    c = cluster_factory(workers=2)
    run = c.start_run(reqs)
    # kill the busier worker once tokens are flowing
    deadline = time.time() + 60
    while time.time() < deadline and c.stats()["generated_tokens"] < 40:
        time.sleep(0.05)
    busiest = max(c.stats()["workers"], key=lambda w: w["running"] + w["waiting"])
    victim = 0 if busiest["url"].endswith("worker-0.ipc") else 1
    c.kill(c.workers[victim])
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    import json
    got = [json.loads(line) for line in out.splitlines()]
    assert [r["ids"] for r in got] == want, c.logs()
    assert all(r["finish"] in ("length", "stop") for r in got)
    st = c.stats()
    assert st["failovers"] > 0, st
    assert len(st["workers"]) == 1


def test_worker_restart_and_scheduler_restart(bin_dir, model, cluster_factory):
    c = cluster_factory(workers=1)
    req = [{"prompt_ids": [1, 2, 3, 4, 5], "max_tokens": 5}]
    want = c.run(req)[0]["ids"]
    # a worker restarted by its supervisor registers again
    c.kill(c.workers[0])
    c.start_worker(0)
    c.wait_workers(1)
    assert c.run(req)[0]["ids"] == want
    # a restarted scheduler learns of the running worker within seconds
    c.kill(c.scheduler, signal.SIGTERM)
    c.start_scheduler()
    c.wait_workers(1)
    assert c.run(req)[0]["ids"] == want


def test_overload_and_invalid_requests(bin_dir, model, cluster_factory):
    c = cluster_factory(workers=1, kv_tokens=1024, sched_args=["--max-waiting", "2", "--max-running", "2"])
    prompts = random_prompts(12, seed=6, lo=5, hi=10)
    reqs = [{"prompt_ids": p, "max_tokens": 40} for p in prompts]
    reqs += [{"prompt_ids": [1] * 1000, "max_tokens": 100},      # longer than the KV cache
             {"prompt_ids": [VOCAB + 5], "max_tokens": 4},       # not a token
             {"prompt_ids": [], "max_tokens": 4}]
    got = c.run(reqs)
    rejected = [r for r in got[:12] if r["finish"] == "rejected"]
    assert rejected and all("overloaded" in r["error"] for r in rejected)
    assert all(r["finish"] == "length" for r in got[:12] if r["finish"] != "rejected")
    for r in got[12:]:
        assert r["finish"] == "rejected" and r["code"] == -1, r
    assert "exceed the context of 1024 tokens" in got[12]["error"] and "vocabulary" in got[13]["error"]
