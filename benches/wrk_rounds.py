#!/usr/bin/env python3
"""Interleaved wrk rounds: direct vs meshd, same tool, same run (stdlib only; used by run.sh).

For each round and each connection count, wrk runs once against the engine ("direct") and once
against meshd in front of it, in ABBA order (round 1: direct then meshd, round 2: meshd then
direct, ...), so drift and neighbours' load hit both sides alike. Around every wrk run it samples:
  - on-CPU time of meshd and of the engine (sum over /proc/PID/task/*/schedstat, nanoseconds),
  - wrk's own CPU (via /usr/bin/time when present),
  - meshd's voluntary/involuntary context switches (sum over its threads, /proc/PID/task/*/status),
  - the whole machine's busy and steal time from /proc/stat,
so the report can give meshd CPU per request and flag runs where something else was using the CPU.
Prints one line per run: WRKRUN {json}.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def task_cpu_ns(pid):
    if not pid:
        return None
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def task_switches(pid):
    """(voluntary, involuntary) context switches summed over the threads of pid."""
    if not pid:
        return None
    vol = inv = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        inv += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
    return vol, inv


def machine_ticks():
    """(busy, steal, total) jiffies from the first line of /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq
    return busy, steal, busy + idle + iowait + steal


def run_wrk(url, conns, secs, script, env, timeout_s):
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{secs}s", "--timeout", "2s", "--latency", "-s", script, url]
    timefile = None
    if shutil.which("/usr/bin/time") or os.path.exists("/usr/bin/time"):
        timefile = f"/tmp/meshd-bench-wrktime.{os.getpid()}"
        cmd = ["/usr/bin/time", "-o", timefile, "-f", "%U %S"] + cmd
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    m = re.search(r"^WRKJSON (\{.*\})$", p.stdout, re.M)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed (rc={p.returncode}): {p.stdout[-2000:]} {p.stderr[-2000:]}")
    r = json.loads(m.group(1))
    if timefile:
        try:
            with open(timefile) as f:
                u, s = f.read().split()[-2:]
            r["wrk_cpu_ms"] = (float(u) + float(s)) * 1e3
        except (OSError, ValueError):
            pass
        try:
            os.unlink(timefile)
        except OSError:
            pass
    non_socket = re.search(r"Non-2xx or 3xx responses: (\d+)", p.stdout)
    r["non2xx"] = int(non_socket.group(1)) if non_socket else 0
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", required=True)
    ap.add_argument("--direct", required=True)
    ap.add_argument("--meshd", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--pid-meshd", type=int, default=0)
    ap.add_argument("--pid-engine", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--conns", default="1,8", help="comma-separated connection counts")
    ap.add_argument("--secs", type=int, default=3)
    ap.add_argument("--warmup-secs", type=int, default=1)
    ap.add_argument("--script", required=True)
    ap.add_argument("--budget", type=float, default=150.0, help="stop starting rounds after this many seconds")
    a = ap.parse_args()

    env = dict(os.environ, BENCH_MODEL=a.model)
    conns = [int(c) for c in a.conns.split(",") if c]
    targets = [("direct", a.direct), ("meshd", a.meshd)]
    t0 = time.monotonic()
    # Warm-up: connections, caches, the JIT-less but lazily-initialised bits of every process.
    if a.warmup_secs > 0:
        for _, url in targets:
            run_wrk(url, max(conns), a.warmup_secs, a.script, env, a.warmup_secs + 15)
    for rnd in range(1, a.rounds + 1):
        if time.monotonic() - t0 > a.budget:
            print(f"wrk_rounds: budget of {a.budget}s used up after {rnd - 1} rounds", file=sys.stderr)
            break
        order = targets if rnd % 2 == 1 else list(reversed(targets))
        for c in conns:
            for name, url in order:
                m0, e0, b0 = task_cpu_ns(a.pid_meshd), task_cpu_ns(a.pid_engine), machine_ticks()
                s0 = task_switches(a.pid_meshd)
                w0 = time.monotonic()
                r = run_wrk(url, c, a.secs, a.script, env, a.secs + 20)
                wall = time.monotonic() - w0
                m1, e1, b1 = task_cpu_ns(a.pid_meshd), task_cpu_ns(a.pid_engine), machine_ticks()
                s1 = task_switches(a.pid_meshd)
                r.update(backend=a.backend, target=name, conns=c, round=rnd, wall_s=wall)
                r["rps"] = r["requests"] / (r["duration_us"] / 1e6) if r["duration_us"] else 0.0
                if m0 is not None and m1 is not None:
                    r["meshd_cpu_ms"] = (m1 - m0) / 1e6
                    r["meshd_cpu_us_per_req"] = (m1 - m0) / 1e3 / max(1, r["requests"])
                if s0 is not None and s1 is not None:
                    # Every voluntary switch is a meshd thread going to sleep and being woken again.
                    r["meshd_vol_switches_per_req"] = (s1[0] - s0[0]) / max(1, r["requests"])
                    r["meshd_invol_switches_per_req"] = (s1[1] - s0[1]) / max(1, r["requests"])
                if e0 is not None and e1 is not None:
                    r["engine_cpu_ms"] = (e1 - e0) / 1e6
                    r["engine_cpu_us_per_req"] = (e1 - e0) / 1e3 / max(1, r["requests"])
                busy, steal, total = (b1[i] - b0[i] for i in range(3))
                r["machine_busy_cores"] = busy / CLK_TCK / wall if wall > 0 else None
                r["machine_steal_cores"] = steal / CLK_TCK / wall if wall > 0 else None
                known_ms = (r.get("meshd_cpu_ms") or 0) + (r.get("engine_cpu_ms") or 0) + (r.get("wrk_cpu_ms") or 0)
                # Tick accounting is coarse (10 ms) and includes the sampler itself: treat as an indicator.
                r["other_cpu_cores"] = max(0.0, busy * 1000.0 / CLK_TCK - known_ms) / 1000.0 / wall if wall > 0 else None
                print("WRKRUN " + json.dumps(r), flush=True)
                errs = r["err_status"] + r["err_read"] + r["err_write"] + r["err_connect"] + r["err_timeout"]
                print(f"[bench]   {a.backend:6} r{rnd} c{c} {name:6} {r['rps']:8.0f} req/s  p50 {r['p50_us']:6d} us"
                      f"  p99 {r['p99_us']:6d} us  errors {errs}  meshd CPU {r.get('meshd_cpu_us_per_req', 0):6.1f} us/req"
                      f" {r.get('meshd_vol_switches_per_req', 0):5.2f} sleeps/req",
                      file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
