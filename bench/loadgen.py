#!/usr/bin/env python3
"""Serving benchmark for any OpenAI-compatible server: inferno's gateway,
llama.cpp's llama-server, vLLM. Streams chat completions and times them.

    bench/loadgen.py run --target inferno=http://127.0.0.1:8080 [--target llama=http://...]
        [--concurrency 1,4,16 | --rate 0.5,1,2] [--requests N] [--workload random|shared-prefix]
        [--prompt-len DIST] [--output-len DIST] [--json OUT.json] [--plot OUT.png]
    bench/loadgen.py table A.json [B.json ...]     # runs side by side, as a markdown table
    bench/loadgen.py plot A.json [B.json ...] --out OUT.png

Load:
  --concurrency C   closed loop: C clients, each sends its next request when
                    the last one ends (a list runs one measurement per value)
  --rate R          open loop: requests arrive as a Poisson process of R per
                    second, whatever the server's pace; latency counts from
                    the arrival, so client-side queueing shows up in it
Workloads:
  random            one user message of --prompt-len random words per request
  shared-prefix     --sessions conversations, all opening with the same
                    --prefix-len-word system prompt, --turns turns each; every
                    turn sends the whole conversation so far (multi-turn chat),
                    so the server can reuse both the shared system prompt and
                    each conversation's earlier turns
DIST is N, uniform:LO:HI or normal:MEAN:SD (rounded, at least 1). Output
lengths are exact: requests carry max_tokens and ignore_eos (an extension of
llama.cpp and vLLM that inferno supports too; other servers may stop early,
and the report counts the tokens they returned).

Per request: TTFT (first streamed token), ITL (gaps between streamed chunks),
TPOT ((E2E - TTFT) / (tokens - 1)), E2E; per run: p50/p90/p99 of each, request
and token throughput, the prefix cache hit rate (usage.prompt_tokens_details.
cached_tokens, or llama-server's timings.cache_n), errors by status. Only the
standard library is needed to measure; plots need matplotlib."""
import argparse
import http.client
import json
import math
import random
import sys
import threading
import time
import urllib.parse

WORDS = ("the of and to in is it you that he was for on are with as his they be at one have this from or had by "
         "word but what some we can out other were all there when up use your how said an each she which do their "
         "time if will way about many then them write would like so these her long make thing see him two has look "
         "more day could go come did number sound no most people my over know water than call first who may down "
         "side been now find any new work part take get place made live where after back little only round man year "
         "came show every good me give our under name very through just form sentence great think say help low line "
         "differ turn cause much mean before move right boy old too same tell does set three want air well also play "
         "small end put home read hand port large spell add even land here must big high such follow act why ask men "
         "change went light kind off need house picture try us again animal point mother world near build self earth "
         "father head stand own page should country found answer school grow study still learn plant cover food sun "
         "four between state keep eye never last let thought city tree cross farm hard start might story saw far sea "
         "draw left late run while press close night real life few north open seem together next white children "
         "begin got walk example ease paper group always music those both mark often letter until mile river car "
         "feet care second book carry took science eat room friend began idea fish mountain stop once base hear "
         "horse cut sure watch color face wood main enough plain girl usual young ready above ever red list though "
         "feel talk bird soon body dog family direct pose leave song measure door product black short numeral class "
         "wind question happen complete ship area half rock order fire south problem piece told knew pass since top "
         "whole king space heard best hour better true during hundred five remember step early hold west ground "
         "interest reach fast verb sing listen six table travel less morning ten simple several vowel toward war lay "
         "against pattern slow center love person money serve appear road map rain rule govern pull cold notice "
         "voice unit power town fine certain fly fall lead cry dark machine note wait plan figure star box noun field "
         "rest correct able pound done beauty drive stood contain front teach week final gave green oh quick develop "
         "ocean warm free minute strong special mind behind clear tail produce fact street inch multiply nothing "
         "course stay wheel full force blue object decide surface deep moon island foot system busy test record boat "
         "common gold possible plane stead dry wonder laugh thousand ago ran check game shape equate hot miss brought "
         "heat snow tire bring yes distant fill east paint language among").split()


def parse_dist(text):
    """'128', 'uniform:64:256' or 'normal:128:32' -> a function of a Random."""
    parts = text.split(":")
    try:
        if len(parts) == 1:
            n = int(parts[0])
            return lambda rng: n
        lo, hi = float(parts[1]), float(parts[2])
        if parts[0] == "uniform":
            return lambda rng: rng.randint(int(lo), int(hi))
        if parts[0] == "normal":
            return lambda rng: max(1, round(rng.gauss(lo, hi)))
    except (ValueError, IndexError):
        pass
    raise argparse.ArgumentTypeError(f"bad length distribution {text!r}: use N, uniform:LO:HI or normal:MEAN:SD")


def words(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def percentiles(xs):
    if not xs:
        return None
    s = sorted(xs)

    def p(q):  # linear interpolation between closest ranks
        k = (len(s) - 1) * q
        f = math.floor(k)
        return s[f] + (s[min(f + 1, len(s) - 1)] - s[f]) * (k - f)
    return {"mean": sum(s) / len(s), "p50": p(0.5), "p90": p(0.9), "p99": p(0.99), "max": s[-1]}


# ---------------------------------------------------------------- workloads

class RandomWorkload:
    """Independent single-message requests: conversation i has one turn.
    `salt` (the load point's index) keeps one load point from hitting the
    prefix cache with another's prompts; every target gets the same ones."""

    def __init__(self, args):
        self.n, self.seed = args.requests, args.seed
        self.prompt_len, self.output_len = args.prompt_len, args.output_len

    def conversations(self):
        return self.n

    def turns(self, i, salt):
        rng = random.Random((self.seed * 1000003 + i) * 101 + salt)
        yield [{"role": "user", "content": words(rng, self.prompt_len(rng))}], self.output_len(rng)


class SharedPrefixWorkload:
    """Multi-turn chats sharing one long system prompt. `turns(i)` is a
    generator fed each reply, so the next turn carries the real history."""

    def __init__(self, args):
        self.sessions, self.n_turns, self.seed = args.sessions, args.turns, args.seed
        self.prefix_len = args.prefix_len
        self.prompt_len, self.output_len = args.prompt_len, args.output_len

    def conversations(self):
        return self.sessions

    def turns(self, i, salt):
        rng = random.Random((self.seed * 1000003 + i) * 101 + salt)
        system = words(random.Random(self.seed * 101 + salt), self.prefix_len)
        messages = [{"role": "system", "content": system}]
        for _ in range(self.n_turns):
            messages.append({"role": "user", "content": words(rng, self.prompt_len(rng))})
            reply = yield list(messages), self.output_len(rng)
            messages.append({"role": "assistant", "content": reply or ""})


# ---------------------------------------------------------------- one request

class Target:
    def __init__(self, name, url, api_key, model):
        self.name, self.url = name, url.rstrip("/")
        u = urllib.parse.urlsplit(self.url)
        self.host, self.port = u.hostname, u.port or 80
        self.prefix = u.path
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.model = model or self.first_model()

    def first_model(self):
        c = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            c.request("GET", self.prefix + "/v1/models", headers=self.headers)
            r = c.getresponse()
            return json.loads(r.read())["data"][0]["id"] if r.status == 200 else None
        except (OSError, ValueError, KeyError, IndexError):
            return None
        finally:
            c.close()


def stream_chat(target, messages, max_tokens, timeout, t_arrival):
    """One streamed chat completion. Returns the request's record and its text."""
    body = {"messages": messages, "max_tokens": max_tokens, "stream": True, "temperature": 0,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    if target.model:
        body["model"] = target.model
    rec = {"t_arrival": t_arrival, "status": 0, "error": None, "ttft": None, "e2e": None, "itl": [], "asked": max_tokens,
           "prompt_tokens": None, "completion_tokens": None, "cached_tokens": None}
    text = []
    chunk_times = []
    conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
    try:
        conn.request("POST", target.prefix + "/v1/chat/completions", json.dumps(body), target.headers)
        resp = conn.getresponse()
        rec["status"] = resp.status
        if resp.status != 200:
            rec["error"] = resp.read(300).decode(errors="replace")
            return rec, None
        while True:
            line = resp.readline()
            if not line:
                rec["error"] = "stream ended without [DONE]"
                break
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                break
            ev = json.loads(data)
            if "error" in ev:
                rec["error"] = json.dumps(ev["error"])[:300]
                break
            for ch in ev.get("choices") or []:
                delta = ch.get("delta") or {}
                piece = (delta.get("content") or "") + (delta.get("reasoning_content") or "")
                if piece:
                    chunk_times.append(time.perf_counter())
                    text.append(delta.get("content") or "")
            usage = ev.get("usage")
            if usage:
                rec["prompt_tokens"] = usage.get("prompt_tokens")
                rec["completion_tokens"] = usage.get("completion_tokens")
                rec["cached_tokens"] = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
            timings = ev.get("timings")  # llama-server
            if timings and rec["cached_tokens"] is None and "cache_n" in timings:
                rec["cached_tokens"] = timings["cache_n"]
    except (OSError, http.client.HTTPException, ValueError) as e:
        rec["error"] = f"{type(e).__name__}: {e}"
    finally:
        conn.close()
    end = time.perf_counter()
    if chunk_times:
        rec["ttft"] = chunk_times[0] - t_arrival
        rec["itl"] = [b - a for a, b in zip(chunk_times, chunk_times[1:])]
    if rec["completion_tokens"] is None:
        rec["completion_tokens"] = len(chunk_times)
    rec["e2e"] = end - t_arrival
    return rec, ("".join(text) if rec["error"] is None else None)


def run_conversation(target, workload, i, salt, timeout, t_arrival, records, lock):
    gen = workload.turns(i, salt)
    reply = None
    try:
        messages, max_tokens = next(gen)
        while True:
            rec, reply = stream_chat(target, messages, max_tokens, timeout, t_arrival)
            rec["conversation"] = i
            with lock:
                records.append(rec)
            if reply is None:
                return  # a failed turn ends its conversation
            messages, max_tokens = gen.send(reply)
            t_arrival = time.perf_counter()  # later turns follow their reply at once
    except StopIteration:
        pass


# ---------------------------------------------------------------- one measurement

def measure(target, workload, load, salt, args):
    """Runs the whole workload at one load point: {"concurrency": C} or {"rate": R}."""
    records, lock = [], threading.Lock()
    n = workload.conversations()
    t0 = time.perf_counter()
    threads = []
    if "concurrency" in load:
        next_i = iter(range(n))

        def client():
            while True:
                with lock:
                    i = next(next_i, None)
                if i is None:
                    return
                run_conversation(target, workload, i, salt, args.timeout, time.perf_counter(), records, lock)
        threads = [threading.Thread(target=client) for _ in range(min(load["concurrency"], n))]
        [t.start() for t in threads]
    else:
        rng = random.Random(args.seed)
        t_next = t0
        for i in range(n):
            t_next += rng.expovariate(load["rate"])
            time.sleep(max(0.0, t_next - time.perf_counter()))
            t = threading.Thread(target=run_conversation,
                                 args=(target, workload, i, salt, args.timeout, t_next, records, lock))
            t.start()
            threads.append(t)
    [t.join() for t in threads]
    duration = time.perf_counter() - t0
    return {"target": target.name, "url": target.url, "model": target.model, **load,
            "summary": summarize(records, duration), "requests": records}


def summarize(records, duration):
    ok = [r for r in records if r["error"] is None]
    errors = {}
    for r in records:
        if r["error"] is not None:
            key = str(r["status"]) if r["status"] != 200 else "stream"
            errors[key] = errors.get(key, 0) + 1
    prompt = sum(r["prompt_tokens"] or 0 for r in ok)
    completion = sum(r["completion_tokens"] or 0 for r in ok)
    cached = [r["cached_tokens"] for r in ok if r["cached_tokens"] is not None]
    tpot = [(r["e2e"] - r["ttft"]) / (r["completion_tokens"] - 1) for r in ok
            if r["ttft"] is not None and (r["completion_tokens"] or 0) > 1]
    short = sum(1 for r in ok if (r["completion_tokens"] or 0) < r["asked"])
    return {"requests": len(records), "ok": len(ok), "errors": errors, "duration_s": duration,
            "short_replies": short,  # fewer tokens than asked: the server ended or cut them early
            "request_throughput": len(ok) / duration, "output_token_throughput": completion / duration,
            "total_token_throughput": (prompt + completion) / duration,
            "prompt_tokens_mean": prompt / len(ok) if ok else 0, "completion_tokens_mean": completion / len(ok) if ok else 0,
            "prefix_hit_rate": (sum(cached) / prompt) if cached and prompt else None,
            "ttft_s": percentiles([r["ttft"] for r in ok if r["ttft"] is not None]),
            "itl_s": percentiles([x for r in ok for x in r["itl"]]),
            "tpot_s": percentiles(tpot),
            "e2e_s": percentiles([r["e2e"] for r in ok])}


# ---------------------------------------------------------------- reporting

def load_label(run):
    return f"c={run['concurrency']}" if "concurrency" in run else f"{run['rate']:g} req/s"


def table(runs):
    def ms(p, k):
        return f"{p[k] * 1e3:.0f}" if p else "-"
    lines = ["| server | load | req/s | out tok/s | TTFT p50/p90/p99 ms | ITL p50/p90/p99 ms | TPOT p50 ms "
             "| E2E p50/p99 s | prefix hits | errors |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        s = run["summary"]
        t, i, e = s["ttft_s"], s["itl_s"], s["e2e_s"]
        hit = f"{s['prefix_hit_rate']:.2f}" if s["prefix_hit_rate"] is not None else "-"
        errs = ", ".join(f"{k}: {v}" for k, v in s["errors"].items()) or "0"
        if s.get("short_replies"):
            errs += f" ({s['short_replies']} short)"
        lines.append(f"| {run['target']} | {load_label(run)} | {s['request_throughput']:.2f} | "
                     f"{s['output_token_throughput']:.1f} | {ms(t, 'p50')}/{ms(t, 'p90')}/{ms(t, 'p99')} | "
                     f"{ms(i, 'p50')}/{ms(i, 'p90')}/{ms(i, 'p99')} | {ms(s['tpot_s'], 'p50')} | "
                     f"{e['p50'] if e else 0:.2f}/{e['p99'] if e else 0:.2f} | {hit} | {errs} |")
    return "\n".join(lines)


def plot(runs, out, title=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    by_target = {}
    for run in runs:
        by_target.setdefault(run["target"], []).append(run)
    closed = all("concurrency" in r for r in runs)
    xlabel = "concurrent clients" if closed else "offered load, requests/s"
    for name, rs in by_target.items():
        x = [r["concurrency"] if "concurrency" in r else r["rate"] for r in rs]
        s = [r["summary"] for r in rs]
        ax[0][0].plot(x, [v["output_token_throughput"] for v in s], "o-", label=name)
        for k, style in (("p50", "o-"), ("p99", "x--")):
            ax[0][1].plot(x, [v["ttft_s"][k] * 1e3 if v["ttft_s"] else math.nan for v in s], style, label=f"{name} {k}")
            ax[1][0].plot(x, [v["itl_s"][k] * 1e3 if v["itl_s"] else math.nan for v in s], style, label=f"{name} {k}")
        last = rs[-1]
        e2e = sorted(r["e2e"] for r in last["requests"] if r["error"] is None)
        ax[1][1].plot(e2e, [(k + 1) / len(e2e) for k in range(len(e2e))], label=f"{name}, {load_label(last)}")
    for a, t, yl in ((ax[0][0], "output throughput", "tokens/s"), (ax[0][1], "time to first token", "ms"),
                     (ax[1][0], "inter-token latency", "ms")):
        a.set_title(t), a.set_xlabel(xlabel), a.set_ylabel(yl), a.grid(alpha=0.3), a.legend(fontsize=8)
        if closed and len({r["concurrency"] for r in runs}) > 2:
            a.set_xscale("log", base=2)
    ax[1][1].set_title("end-to-end latency at the highest load (CDF)")
    ax[1][1].set_xlabel("seconds"), ax[1][1].grid(alpha=0.3), ax[1][1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=80)


# ---------------------------------------------------------------- command line

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure one or more servers")
    r.add_argument("--target", action="append", required=True, metavar="NAME=URL",
                   help="a server to measure, e.g. inferno=http://127.0.0.1:8080 (repeat to compare)")
    load = r.add_mutually_exclusive_group()
    load.add_argument("--concurrency", default="4", help="closed loop: comma-separated client counts")
    load.add_argument("--rate", help="open loop: comma-separated request rates per second")
    r.add_argument("--workload", choices=("random", "shared-prefix"), default="random")
    r.add_argument("--requests", type=int, default=32, help="random workload: requests per load point")
    r.add_argument("--sessions", type=int, default=8, help="shared-prefix: conversations per load point")
    r.add_argument("--turns", type=int, default=4, help="shared-prefix: turns per conversation")
    r.add_argument("--prefix-len", type=int, default=256, help="shared-prefix: words in the shared system prompt")
    r.add_argument("--prompt-len", type=parse_dist, default=parse_dist("128"), help="words per user message")
    r.add_argument("--output-len", type=parse_dist, default=parse_dist("64"), help="tokens per reply")
    r.add_argument("--warmup", type=int, default=2, help="untimed requests before each target")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--timeout", type=float, default=600, help="seconds per request")
    r.add_argument("--api-key")
    r.add_argument("--model", help="model name to send (default: the server's first /v1/models entry)")
    r.add_argument("--json", help="write every run and request here")
    r.add_argument("--plot", help="write a PNG of throughput and latency against load")
    r.add_argument("--title", help="the plot's title")
    t = sub.add_parser("table", help="print runs from JSON files side by side")
    t.add_argument("files", nargs="+")
    p = sub.add_parser("plot", help="plot runs from JSON files")
    p.add_argument("files", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--title")
    args = ap.parse_args(argv)

    if args.cmd in ("table", "plot"):
        runs = [run for f in args.files for run in json.load(open(f))["runs"]]
        print(table(runs)) if args.cmd == "table" else plot(runs, args.out, args.title)
        return 0

    targets = []
    for spec in args.target:
        name, sep, url = spec.partition("=")
        if not sep:
            name, url = urllib.parse.urlsplit(spec).netloc, spec
        targets.append(Target(name, url, args.api_key, args.model))
    loads = ([{"concurrency": int(c)} for c in args.concurrency.split(",")] if not args.rate
             else [{"rate": float(x)} for x in args.rate.split(",")])
    workload = (RandomWorkload if args.workload == "random" else SharedPrefixWorkload)(args)
    runs = []
    for target in targets:
        for i in range(args.warmup):
            rec, _ = stream_chat(target, [{"role": "user", "content": f"warm up {i}"}], 8, args.timeout,
                                 time.perf_counter())
            if rec["error"]:
                print(f"loadgen: {target.name} ({target.url}): warm-up failed: {rec['status']} {rec['error']}",
                      file=sys.stderr)
                return 1
        for salt, ld in enumerate(loads):
            run = measure(target, workload, ld, salt, args)
            runs.append(run)
            s = run["summary"]
            print(f"{target.name} {load_label(run)}: {s['ok']}/{s['requests']} ok, "
                  f"{s['output_token_throughput']:.1f} out tok/s", file=sys.stderr)
    report = {"tool": "inferno bench/loadgen.py", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "workload": {"kind": args.workload, "requests": args.requests, "sessions": args.sessions,
                           "turns": args.turns, "prefix_len": args.prefix_len, "seed": args.seed,
                           "argv": sys.argv[1:] if argv is None else argv},
              "runs": runs}
    print(table(runs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.plot:
        plot(runs, args.plot, args.title)
    return 0 if all(not run["summary"]["errors"] for run in runs) else 3


if __name__ == "__main__":
    sys.exit(main())
