#!/usr/bin/env python3
"""A/B two or more meshd binaries on CPU per request and per chunk, in one run (stdlib only).

  benches/ab_cpu.py base=/tmp/meshd-old new=.build/release/meshd [--rounds 4] [--llama 0]

Starts nginx (static answer, as run.sh configures it), meshd-sim-engine streaming at 400 tokens/s
and, when built, llama-server; then one meshd per binary in front of all of them. Each round runs,
for every binary in turn (order reversed every other round): wrk -t1 -c1 against nginx through
that meshd (meshd CPU µs and thread sleeps per request, p50), and streamed requests through it
(meshd CPU µs and sleeps per chunk; with llama, tokens/s through meshd / direct). CPU comes from
/proc/PID/task/*/schedstat, so it is less noisy than latency on a shared machine, but still
compare only binaries measured in the same run (an A/A pair shows the noise: ±20 µs/req here).
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import stream_bench  # noqa: E402
import wrk_rounds  # noqa: E402

PROCS = []
WORK = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_http(url, secs=30):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return True
        except Exception:
            time.sleep(0.2)
    return False


def start(cmd):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    PROCS.append(p)
    return p


def stream_body(model):
    return {"model": model, "messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": 256,
            "stream": True, "stream_options": {"include_usage": True}, "temperature": 0, "seed": 42, "ignore_eos": True}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bins", nargs="+", help="label=path of a meshd binary")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--secs", type=int, default=3, help="seconds per wrk run")
    ap.add_argument("--streams", type=int, default=2, help="streams per binary, engine and round")
    ap.add_argument("--llama", type=int, default=1, help="0: skip llama-server")
    ap.add_argument("--sim", default=os.path.join(ROOT, ".build/release/meshd-sim-engine"))
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="meshd-ab.")
    WORK.append(work)

    nport = free_port()
    nd = f"{work}/nginx"
    os.makedirs(nd + "/logs")
    os.makedirs(nd + "/tmp")
    conf = open(f"{HERE}/nginx.conf.in").read()
    for k, v in (("@PORT@", str(nport)), ("@PREFIX@", nd), ("@MODEL@", "bench-static")):
        conf = conf.replace(k, v)
    open(nd + "/nginx.conf", "w").write(conf)
    start(["nginx", "-p", nd, "-c", nd + "/nginx.conf", "-e", nd + "/logs/error.log"])
    sport = free_port()
    start([a.sim, "--host", "127.0.0.1", "--port", str(sport), "--models", "sim", "--loaded", "sim",
           "--gen-tps", "400", "--prompt-tps", "0", "--latency-ms", "0", "--slots", "4", "--max-tokens", "8"])
    engines = [f"http://127.0.0.1:{nport}", f"http://127.0.0.1:{sport}"]
    streams = [("sim", engines[1], "sim", None)]
    if a.llama:
        lport = free_port()
        bindir = subprocess.check_output([f"{ROOT}/tools/build-llama.sh"], text=True).strip()
        gguf = subprocess.check_output([f"{ROOT}/tools/make-tiny-model.sh"], text=True).strip()
        llama = start([bindir + "/llama-server", "-m", gguf, "-c", "512", "-t", "1", "--alias", "meshd-tiny",
                       "--host", "127.0.0.1", "--port", str(lport)])
        engines.append(f"http://127.0.0.1:{lport}")
        streams.append(("llama", engines[2], "meshd-tiny", llama))
        assert wait_http(f"{engines[2]}/health", 60), "llama-server did not start"
    assert wait_http(f"{engines[0]}/v1/models") and wait_http(f"{engines[1]}/v1/models"), "backends did not start"

    meshds = {}
    for spec in a.bins:
        label, path = spec.split("=", 1)
        d = f"{work}/meshd-{label}"
        os.makedirs(d + "/state")
        port, mport = free_port(), free_port()
        eng = "\n".join(f'  - {{ kind: openai, url: "{e}" }}' for e in engines)
        open(d + "/meshd.yaml", "w").write(
            f'node: {{ name: bench }}\nstate_dir: "{d}/state"\nhttp: {{ listen: "127.0.0.1:{port}" }}\n'
            f'admin: {{ socket: "{d}/meshd.sock" }}\nengines:\n{eng}\nmesh: {{ listen: "127.0.0.1:{mport}" }}\n'
            'discovery: { mdns: false }\n')
        meshds[label] = (start([path, "--config", d + "/meshd.yaml"]), f"http://127.0.0.1:{port}")
        assert wait_http(f"http://127.0.0.1:{port}/readyz"), f"meshd {label} not ready"
    time.sleep(3)  # first engine polls

    keys = ["req_us", "req_sleeps", "p50_us"] + [f"{t}_{k}" for t, *_ in streams for k in ("chunk_us", "chunk_sleeps")]
    if a.llama:
        keys.append("llama_ratio")
    res = {label: {k: [] for k in keys} for label in meshds}
    env = dict(os.environ, BENCH_MODEL="bench-static")
    script = f"{HERE}/chat.lua"
    for r in range(a.rounds):
        order = list(meshds.items()) if r % 2 == 0 else list(reversed(meshds.items()))
        for label, (p, url) in order:
            out = res[label]
            wrk_rounds.run_wrk(url, 1, 1, script, env, 60)  # warm-up
            c0, s0 = wrk_rounds.task_cpu_ns(p.pid), wrk_rounds.task_switches(p.pid)
            w = wrk_rounds.run_wrk(url, 1, a.secs, script, env, 60)
            c1, s1 = wrk_rounds.task_cpu_ns(p.pid), wrk_rounds.task_switches(p.pid)
            n = max(1, w["requests"])
            out["req_us"].append((c1 - c0) / 1e3 / n)
            out["req_sleeps"].append((s1[0] - s0[0]) / n)
            out["p50_us"].append(w["p50_us"])
            for tag, engine_url, model, engine_proc in streams:
                for _ in range(a.streams):
                    m = stream_bench.one_request(stream_bench.Target("meshd", url, p.pid), stream_body(model), "tokens", 60)
                    out[f"{tag}_chunk_us"].append(m["pid_cpu_ns_per_chunk"] / 1e3)
                    out[f"{tag}_chunk_sleeps"].append(m["pid_vol_switches_per_chunk"])
                    if engine_proc is not None:
                        d = stream_bench.one_request(stream_bench.Target("direct", engine_url, engine_proc.pid),
                                                     stream_body(model), "tokens", 60)
                        out["llama_ratio"].append(m["tokens_per_s"] / d["tokens_per_s"])
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr, flush=True)
    for label, v in res.items():
        print(label, json.dumps({k: round(statistics.median(x), 3) for k, x in v.items() if x}))
        print("  per run:", json.dumps({k: [round(y, 1) for y in x] for k, x in v.items()}))


try:
    main()
finally:
    for proc in reversed(PROCS):
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
    for w in WORK:
        shutil.rmtree(w, ignore_errors=True)
