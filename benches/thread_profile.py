#!/usr/bin/env python3
"""Per-thread CPU and context switches of a process across a workload (stdlib only).

  benches/thread_profile.py --pid MESHD_PID --per N -- COMMAND...

Snapshots /proc/PID/task/*/{comm,status,schedstat}, runs COMMAND, snapshots again and prints, per
thread, on-CPU µs, voluntary and involuntary context switches, each divided by --per (requests,
chunks...). Use it to see how many thread hand-offs meshd makes per request: every voluntary switch
is a thread going to sleep and being woken again (futex, epoll, poll).
"""
import argparse
import os
import subprocess
import sys


def snapshot(pid):
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{tid}"
        try:
            comm = open(f"{base}/comm").read().strip()
            vol = invol = 0
            for line in open(f"{base}/status"):
                if line.startswith("voluntary_ctxt_switches"):
                    vol = int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    invol = int(line.split()[1])
            ns = int(open(f"{base}/schedstat").read().split()[0])
        except OSError:
            continue
        out[tid] = (comm, vol, invol, ns)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--per", type=float, default=1.0, help="divide by this count (requests, chunks)")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    s0 = snapshot(a.pid)
    if cmd:
        subprocess.run(cmd, timeout=a.timeout, check=False)
    s1 = snapshot(a.pid)
    tot = [0.0, 0.0, 0.0]
    print(f"{'tid':>8} {'thread':18} {'cpu µs':>10} {'vol':>7} {'invol':>7}   (per {a.per:g})")
    for tid, (comm, v1, i1, n1) in sorted(s1.items(), key=lambda kv: int(kv[0])):
        _, v0, i0, n0 = s0.get(tid, (comm, 0, 0, 0))
        cpu, vol, inv = (n1 - n0) / 1e3 / a.per, (v1 - v0) / a.per, (i1 - i0) / a.per
        tot[0] += cpu
        tot[1] += vol
        tot[2] += inv
        print(f"{tid:>8} {comm:18} {cpu:10.1f} {vol:7.2f} {inv:7.2f}")
    print(f"{'':>8} {'TOTAL':18} {tot[0]:10.1f} {tot[1]:7.2f} {tot[2]:7.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
