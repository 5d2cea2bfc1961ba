#!/usr/bin/env python3
"""Scale of the mesh (issue 17 point 8) on the multi-host test bed.

One bed of max(--sizes) hosts (tools/testbed.sh through Tests/testbed's `Bed`: network namespaces on a
private bridge, 198.18.0.0/24, each host with its own dbus and avahi-daemon; needs root). Every host runs
a `meshd-sim-engine` on its loopback (odd hosts serve `sim-odd`, even hosts `sim-even`). For each N in
--sizes, meshd starts on h1..hN at once with mDNS discovery and no static peers (`BedNode`, heartbeat
1000 ms, engine poll 1000 ms: the defaults), and the bench measures:

- **formation**: from the first launch (and from the last `start-meshd` returning) until each node's
  `/v1/nodes` (admin socket) lists every other node `up` with its model; the mesh is formed when the
  last node got there;
- **idle** (--idle-s): bytes and packets each host's eth0 sent and received (from /proc/PID/net/dev of a
  process in the host's namespace: only mesh and mDNS traffic crosses it; clients and engines use the
  host's loopback), and each meshd's utime + stime (/proc/PID/stat) as percent of one core;
- **load** (--load-s): a fixed rate over the whole mesh (--rate requests/s, non-streamed chat, 8
  tokens), spread evenly over the N nodes by one client per host (inside the host, to its own
  127.0.0.1), models alternating so that about half the requests are forwarded; bounded in count
  (rate x seconds) and time; the same counters, and mesh bytes per request beyond idle;
- then meshd starts again with mDNS off and one static seed (`mesh.peers: [h1]`) for a second
  formation time (the peers learned through `knownPeers`).

Machine load (/proc/loadavg, busy share of all cores from /proc/stat) is taken over every window: the
CPU figures come from a shared 2-core machine.

    benches/scale.sh [--sizes 4,8,16] [--idle-s 20] [--load-s 20] [--rate 24]
Writes benches/scale.md and benches/scale.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "Tests" / "e2e"), str(ROOT / "Tests" / "mesh"), str(ROOT / "Tests" / "testbed")]

from meshd_e2e import E2EError  # noqa: E402
from mesh_helpers import MeshBinaries, make_secret  # noqa: E402
from testbed_helpers import SCRIPT, SIM_PORT, Bed, BedNode, up_with  # noqa: E402

PREFIX = "mtbscale"
HEARTBEAT_MS = 1000
TICK = os.sysconf("SC_CLK_TCK")

# One client per host, run inside the host: `rate` requests/s to its own meshd from `start` (wall
# clock) for `count` requests at fixed spacing, each bounded by a timeout; prints one JSON line.
CLIENT = r"""
import http.client, json, sys, threading, time
host, rate, count, start, max_tokens, stop_by = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
res = {"ok": 0, "errors": 0, "forwarded": 0, "latency_ms": []}
lock = threading.Lock()
def one(i):
    model = "sim-odd" if i % 2 == 0 else "sim-even"
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Say hello %d." % i}], "max_tokens": max_tokens})
    t0 = time.monotonic()
    try:
        c = http.client.HTTPConnection("127.0.0.1", 11435, timeout=10)
        c.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
        r = c.getresponse(); r.read()
        node = r.getheader("x-meshd-node") or ""
        c.close()
        with lock:
            if r.status == 200:
                res["ok"] += 1; res["latency_ms"].append(round(1000 * (time.monotonic() - t0), 1))
                res["forwarded"] += node != host
            else:
                res["errors"] += 1
    except Exception:
        with lock: res["errors"] += 1
threads = []
for i in range(count):
    at = start + i / rate
    if at > stop_by: break
    time.sleep(max(0.0, at - time.time()))
    t = threading.Thread(target=one, args=(i,), daemon=True); t.start(); threads.append(t)
for t in threads: t.join(max(0.1, stop_by + 12 - time.time()))
res["unfinished"] = sum(t.is_alive() for t in threads)
print(json.dumps(res), flush=True)
"""


def cpu_ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    f = stat[stat.rfind(")") + 2:].split()
    return int(f[11]) + int(f[12])


def eth0(pid: int) -> dict[str, int]:
    """eth0 counters of the network namespace `pid` runs in."""
    for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == "eth0":
            v = [int(x) for x in rest.split()]
            return {"rx_bytes": v[0], "rx_packets": v[1], "tx_bytes": v[8], "tx_packets": v[9]}
    raise E2EError(f"no eth0 in the namespace of pid {pid}")


def machine_busy() -> tuple[int, int]:
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)  # busy, total (idle and iowait are not busy)


def meshd_pid(bed: Bed, host: str) -> int:
    pid = int((bed.dir(host) / "meshd.pid").read_text().strip())
    comm = Path(f"/proc/{pid}/comm").read_text().strip()
    if comm != "meshd":
        raise E2EError(f"{host}: pid {pid} of meshd.pid is {comm}")
    return pid


def keeper(bed: Bed, host: str) -> int:
    return int((bed.dir(host) / "keeper.pid").read_text().strip())


def avahi_pid(bed: Bed, host: str) -> int | None:
    try:
        return int(Path(f"/proc/{keeper(bed, host)}/root/run/avahi-daemon/pid").read_text().strip())
    except (OSError, ValueError):
        return None


class Window:
    """Counters of N hosts between `__init__` and `close()`."""

    def __init__(self, bed: Bed, hosts: list[str], meshd: dict[str, int]) -> None:
        self.bed, self.hosts, self.meshd = bed, hosts, meshd
        self.avahi = {h: avahi_pid(bed, h) for h in hosts}
        self.load0 = os.getloadavg()[0]
        self.busy0 = machine_busy()
        self.net0 = {h: eth0(keeper(bed, h)) for h in hosts}
        self.cpu0 = {h: cpu_ticks(p) for h, p in meshd.items()}
        self.av0 = {h: cpu_ticks(p) for h, p in self.avahi.items() if p}
        self.t0 = time.monotonic()

    def close(self) -> dict[str, Any]:
        secs = time.monotonic() - self.t0
        cpu = {h: (cpu_ticks(p) - self.cpu0[h]) / TICK / secs * 100 for h, p in self.meshd.items()}
        av = {h: (cpu_ticks(p) - self.av0[h]) / TICK / secs * 100 for h, p in self.avahi.items() if p and h in self.av0}
        net = {h: eth0(keeper(self.bed, h)) for h in self.hosts}
        busy1 = machine_busy()
        per = {h: {k: (net[h][k] - self.net0[h][k]) / secs for k in net[h]} for h in self.hosts}
        n = len(self.hosts)

        def stats(vals: list[float]) -> dict[str, float]:
            return {"mean": round(statistics.fmean(vals), 2), "min": round(min(vals), 2), "max": round(max(vals), 2)}

        return {
            "seconds": round(secs, 2),
            "per_node": {k: stats([per[h][k] for h in self.hosts]) for k in ("tx_bytes", "tx_packets", "rx_bytes", "rx_packets")},
            "total_tx_bytes_per_s": round(sum(per[h]["tx_bytes"] for h in self.hosts), 1),
            "total_tx_packets_per_s": round(sum(per[h]["tx_packets"] for h in self.hosts), 1),
            "tx_bytes_per_peer_per_heartbeat": round(statistics.fmean(per[h]["tx_bytes"] for h in self.hosts)
                                                     / max(1, n - 1) / (1000 / HEARTBEAT_MS), 1),
            "tx_packets_per_peer_per_heartbeat": round(statistics.fmean(per[h]["tx_packets"] for h in self.hosts)
                                                       / max(1, n - 1) / (1000 / HEARTBEAT_MS), 2),
            "meshd_cpu_pct_one_core": stats(list(cpu.values())),
            "meshd_cpu_pct_total": round(sum(cpu.values()), 2),
            "avahi_cpu_pct_one_core": stats(list(av.values())) if av else None,
            "loadavg_start": round(self.load0, 2), "loadavg_end": round(os.getloadavg()[0], 2),
            "machine_busy_pct": round(100 * (busy1[0] - self.busy0[0]) / max(1, busy1[1] - self.busy0[1]), 1),
            "by_host": {h: {**{k: round(v, 1) for k, v in per[h].items()}, "meshd_cpu_pct": round(cpu[h], 2)} for h in self.hosts},
        }


def parallel(fn: Any, items: list[Any]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        return list(pool.map(fn, items))


def model_of(host: str) -> str:
    return "sim-odd" if int(host[1:]) % 2 else "sim-even"


def form(bed: Bed, bins: MeshBinaries, secret: Path, hosts: list[str], *, mdns: bool, timeout: float) -> tuple[dict[str, BedNode], dict[str, Any]]:
    """Starts meshd on `hosts` at once; returns the nodes and when each saw every other up with its model."""
    nodes = {h: BedNode(bed, bins, h, secret, mdns=mdns, peers=[] if mdns or h == "h1" else ["h1"],
                        engines=[{"kind": "openai", "url": f"http://127.0.0.1:{SIM_PORT}"}],
                        extra={"engine_poll": {"interval_ms": 1000}}) for h in hosts}
    models = {h: [model_of(h)] for h in hosts}
    t0 = time.monotonic()
    parallel(lambda n: n.start(), list(nodes.values()))
    t_started = time.monotonic()
    seen: dict[str, float] = {}
    deadline = t0 + timeout
    while len(seen) < len(hosts) and time.monotonic() < deadline:
        for h in hosts:
            if h in seen:
                continue
            try:
                if up_with(nodes[h].nodes(), hosts, models):
                    seen[h] = time.monotonic()
            except Exception:  # noqa: BLE001 - not answering yet
                pass
        time.sleep(0.05)
    if len(seen) < len(hosts):
        missing = {h: sorted(n for n, v in (nodes[h].safe_nodes() or {}).items() if isinstance(v, dict) and v.get("state") == "up")
                   if isinstance(nodes[h].safe_nodes(), dict) else nodes[h].safe_nodes() for h in hosts if h not in seen}
        return nodes, {"formed": False, "timeout_s": timeout, "not_formed_views": missing,
                       "start_all_s": round(t_started - t0, 2)}
    per = sorted(t - t0 for t in seen.values())
    return nodes, {"formed": True, "start_all_s": round(t_started - t0, 2),
                   "from_first_launch_s": round(per[-1], 2), "from_all_started_s": round(per[-1] - (t_started - t0), 2),
                   "median_node_s": round(statistics.median(per), 2), "first_node_s": round(per[0], 2)}


def stop(bed: Bed, hosts: list[str]) -> None:
    parallel(lambda h: bed.sh("stop-meshd", h, check=False), hosts)


def load_window(bed: Bed, hosts: list[str], meshd: dict[str, int], args: argparse.Namespace) -> dict[str, Any]:
    n = len(hosts)
    per_rate = args.rate / n
    count = max(1, round(per_rate * args.load_s))
    start = time.time() + 3  # the clients start together, after their interpreters are up
    stop_by = start + args.load_s
    procs = [subprocess.Popen([str(SCRIPT), "--prefix", bed.prefix, "exec", h, sys.executable, "-c", CLIENT, h, str(per_rate),
                               str(count), str(start), str(args.max_tokens), str(stop_by)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for h in hosts]
    outs: list[dict[str, Any]] = []
    try:
        time.sleep(max(0.0, start - time.time()))
        w = Window(bed, hosts, meshd)
        time.sleep(max(0.0, stop_by - time.time()))
        res = w.close()
        for p in procs:
            out, err = p.communicate(timeout=args.load_s + 30)
            try:
                outs.append(json.loads(out.strip().splitlines()[-1]))
            except (ValueError, IndexError):
                outs.append({"ok": 0, "errors": count, "forwarded": 0, "latency_ms": [], "client_error": (out + err)[-300:]})
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    ok = sum(o["ok"] for o in outs)
    lat = sorted(x for o in outs for x in o["latency_ms"])
    res["requests"] = {"rate_per_s": args.rate, "sent": ok + sum(o["errors"] for o in outs), "ok": ok,
                       "errors": sum(o["errors"] for o in outs), "forwarded": sum(o["forwarded"] for o in outs),
                       "unfinished": sum(o.get("unfinished", 0) for o in outs),
                       "latency_ms_p50": lat[len(lat) // 2] if lat else None,
                       "latency_ms_p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None}
    return res


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a + b x."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def growth(results: dict[str, Any]) -> dict[str, Any]:
    """Fits over the sizes, and what they give at 100 and 500 nodes: idle bytes per peer per heartbeat as
    a + b·N (the state lists `knownPeers`, one endpoint per live peer), mesh bytes per request as
    c + d·(N − 1) (`load` messages to every peer as requests start and end, plus the forwarded request
    and answer), meshd idle CPU per node as e + f·N."""
    sizes = [int(n) for n in results["sizes"]]
    xs = [float(n) for n in sizes]
    idle = [results["sizes"][str(n)]["idle"] for n in sizes]
    a, b = fit_line(xs, [w["tx_bytes_per_peer_per_heartbeat"] for w in idle])
    pkts = statistics.fmean(w["tx_packets_per_peer_per_heartbeat"] for w in idle)
    e, f = fit_line(xs, [w["meshd_cpu_pct_one_core"]["mean"] for w in idle])
    per_req = []
    for n in sizes:
        s = results["sizes"][str(n)]
        extra = (s["load"]["total_tx_bytes_per_s"] - s["idle"]["total_tx_bytes_per_s"]) * s["load"]["seconds"]
        ok = max(1, s["load"]["requests"]["ok"])
        per_req.append({"n": n, "mesh_bytes_per_request": round(extra / ok), "per_peer": round(extra / ok / (n - 1))})
    c, d = fit_line([n - 1.0 for n in sizes], [float(p["mesh_bytes_per_request"]) for p in per_req])
    proj = {}
    for n in sorted({*sizes, 100, 500}):
        msg = a + b * n
        node = (n - 1) * msg * 1000 / HEARTBEAT_MS
        # Packets: as measured per peer, plus the TCP segments a state past one MSS (1448 B) needs.
        extra_segs = max(0, -(-int(msg - 300) // 1448) - 1)
        proj[str(n)] = {"bytes_per_peer_per_heartbeat": round(msg), "idle_tx_bytes_per_s_per_node": round(node),
                        "idle_tx_packets_per_s_per_node": round((n - 1) * (pkts + extra_segs) * 1000 / HEARTBEAT_MS),
                        "idle_total_bytes_per_s": round(n * node), "mesh_bytes_per_request": round(c + d * (n - 1)),
                        "idle_meshd_cpu_pct_one_core": round(e + f * n, 1)}
    return {"bytes_per_peer_per_heartbeat": {"a": round(a, 1), "b_per_node": round(b, 2)},
            "packets_per_peer_per_heartbeat": round(pkts, 2),
            "mesh_bytes_per_request": {"c": round(c), "d_per_peer": round(d)},
            "idle_meshd_cpu_pct": {"e": round(e, 3), "f_per_node": round(f, 4)},
            "load_bytes_per_request": per_req, "projection": proj}


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "?")
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "commit": commit, "cpu": model, "cores": os.cpu_count(),
            "kernel": platform.release()}


def report(r: dict[str, Any], command: str) -> str:
    m, g = r["machine"], r["growth"]
    sizes = list(r["sizes"])
    lines = [
        "# Scale: 4, 8 and 16 hosts",
        "",
        f"Made by `{command}` on {m['date']}, commit {m['commit']} (binaries: `{r['binaries']}`), {m['cores']} cores "
        f"({m['cpu']}), kernel {m['kernel']}, in {r['seconds']} s. Load average {r['loadavg_start']} at the start, "
        f"{r['loadavg_end']} at the end. Raw numbers: `scale.json`.",
        "",
        "Test-bed hosts (network namespaces, veth into a private bridge), one meshd and one `meshd-sim-engine` each "
        "(odd hosts serve `sim-odd`, even `sim-even`), mDNS discovery, no static peers, heartbeat 1000 ms. Traffic: each "
        "host's eth0 (mesh and mDNS only; clients and engines are on the host's loopback), sent per node per second, mean "
        "over nodes (min–max). CPU: meshd utime + stime, percent of one core, mean over nodes (max). "
        f"Load: {r['args']['rate']} requests/s over the whole mesh for {r['args']['load_s']} s, non-streamed chat, "
        f"{r['args']['max_tokens']} tokens, one client per host, models alternating (about half forwarded).",
        "",
        "| N | formed (mDNS): from first launch / after all started, s | formed (static seed h1), s | idle tx B/s per node | "
        "idle pkts/s per node | idle B per peer per heartbeat | idle meshd CPU % | load tx B/s per node | load pkts/s per node | "
        "load meshd CPU % | requests ok / err / forwarded | mesh B per request | machine busy % idle / load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        s = r["sizes"][n]
        f, fs, i, ld = s["formation_mdns"], s.get("formation_static", {}), s["idle"], s["load"]
        form_m = f"{f['from_first_launch_s']} / {f['from_all_started_s']}" if f.get("formed") else "not formed"
        form_s = f"{fs['from_first_launch_s']} / {fs['from_all_started_s']}" if fs.get("formed") else "—"
        pr = next(p for p in g["load_bytes_per_request"] if str(p["n"]) == n)
        q = ld["requests"]

        def rng(d: dict[str, float], digits: int = 0) -> str:
            return f"{d['mean']:,.{digits}f} ({d['min']:,.{digits}f}–{d['max']:,.{digits}f})"

        lines.append(
            f"| {n} | {form_m} | {form_s} | {rng(i['per_node']['tx_bytes'])} | {rng(i['per_node']['tx_packets'], 1)} | "
            f"{i['tx_bytes_per_peer_per_heartbeat']:,.0f} | {i['meshd_cpu_pct_one_core']['mean']} ({i['meshd_cpu_pct_one_core']['max']}) | "
            f"{rng(ld['per_node']['tx_bytes'])} | {rng(ld['per_node']['tx_packets'], 1)} | "
            f"{ld['meshd_cpu_pct_one_core']['mean']} ({ld['meshd_cpu_pct_one_core']['max']}) | "
            f"{q['ok']} / {q['errors']} / {q['forwarded']} | {pr['mesh_bytes_per_request']:,} ({pr['per_peer']:,} per peer) | "
            f"{i['machine_busy_pct']} / {ld['machine_busy_pct']} |")
    bp, br, bc = g["bytes_per_peer_per_heartbeat"], g["mesh_bytes_per_request"], g["idle_meshd_cpu_pct"]
    lines += [
        "",
        "Fits (least squares over the sizes; the projected rows extend them, on paper):",
        "",
        f"- idle bytes sent per peer per heartbeat = **{bp['a']} + {bp['b_per_node']}·N** (a state, the ACK of the peer's "
        "state, ZMTP pings; the slope is `knownPeers`: every state lists each live peer's endpoint); "
        f"{g['packets_per_peer_per_heartbeat']} packets per peer per heartbeat;",
        f"- mesh bytes per request beyond idle = **{br['c']} + {br['d_per_peer']}·(N − 1)** (`load` messages to every peer "
        "as a request starts and ends, plus the forwarded request and its answer);",
        f"- idle meshd CPU per node = **{bc['e']} + {bc['f_per_node']}·N** % of one core (noisy: busy machine).",
        "",
        "| N | B per peer per heartbeat | idle tx B/s per node | idle pkts/s per node | idle mesh total B/s | mesh B per request | "
        "idle meshd CPU % per node |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, p in g["projection"].items():
        lines.append(f"| {n}{'' if n in sizes else ' (projected)'} | {p['bytes_per_peer_per_heartbeat']:,} | "
                     f"{p['idle_tx_bytes_per_s_per_node']:,} | {p['idle_tx_packets_per_s_per_node']:,} | {p['idle_total_bytes_per_s']:,} | "
                     f"{p['mesh_bytes_per_request']:,} | {p['idle_meshd_cpu_pct_one_core']} |")
    busy = max(max(s["idle"]["machine_busy_pct"], s["load"]["machine_busy_pct"]) for s in r["sizes"].values())
    if busy > 70 or r["loadavg_start"] > 2 * (m["cores"] or 1):
        lines += ["", f"**The machine was busy** (up to {busy} % of all cores in a window, load average "
                  f"{r['loadavg_start']} at the start): other work shared the cores, so CPU figures and formation "
                  "times are upper bounds; byte and packet counts do not depend on it."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meshd", required=True)
    ap.add_argument("--meshctl", required=True)
    ap.add_argument("--sim", required=True)
    ap.add_argument("--sizes", default="4,8,16", help="host counts, ascending [4,8,16]")
    ap.add_argument("--idle-s", type=float, default=20.0, help="idle window [20]")
    ap.add_argument("--load-s", type=float, default=20.0, help="load window [20]")
    ap.add_argument("--rate", type=float, default=24.0, help="requests/s over the whole mesh under load [24]")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--form-timeout", type=float, default=60.0)
    ap.add_argument("--no-static", action="store_true", help="skip the static-seed formation runs")
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--command", default="benches/scale.sh")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("scale: needs root (the test bed makes network namespaces)")
    sizes = sorted(int(x) for x in args.sizes.split(","))
    # A SIGTERM unwinds like Ctrl-C, so the bed always goes down.
    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, terminated)
    os.environ.update(MESHD_BIN=args.meshd, MESHCTL_BIN=args.meshctl, SIM_ENGINE_BIN=args.sim)
    work = Path(f"/tmp/{PREFIX}-work")
    subprocess.run(["rm", "-rf", str(work)], check=False)
    work.mkdir()
    bins = MeshBinaries(work / "bin")
    bed = Bed(PREFIX, sizes[-1])
    bed.down()
    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine(), "binaries": str(Path(args.meshd).parent), "args": vars(args) | {"sizes": sizes},
                               "heartbeat_ms": HEARTBEAT_MS, "loadavg_start": round(os.getloadavg()[0], 2), "sizes": {}}
    try:
        t = time.monotonic()
        bed.sh("up", str(sizes[-1]), timeout=240)
        results["bed_up_s"] = round(time.monotonic() - t, 1)
        secret = make_secret(bins, work / "mesh.secret")
        for h in bed.hosts:
            bed.spawn(h, "sim", str(bins.sim), "--host", "127.0.0.1", "--port", str(SIM_PORT), "--models", model_of(h),
                      "--loaded", model_of(h), "--slots", "4")
        for n in sizes:
            hosts = bed.hosts[:n]
            print(f"[scale] N={n}: starting meshd with mDNS", flush=True)
            nodes, f = form(bed, bins, secret, hosts, mdns=True, timeout=args.form_timeout)
            entry: dict[str, Any] = {"formation_mdns": f}
            results["sizes"][str(n)] = entry
            print(f"[scale] N={n}: formation {f}", flush=True)
            if not f["formed"]:
                stop(bed, hosts)
                raise E2EError(f"N={n}: the mesh did not form in {args.form_timeout}s: {f}")
            meshd = {h: meshd_pid(bed, h) for h in hosts}
            time.sleep(3)  # first snapshots and load messages settle
            w = Window(bed, hosts, meshd)
            time.sleep(args.idle_s)
            entry["idle"] = w.close()
            print(f"[scale] N={n}: idle {entry['idle']['per_node']['tx_bytes']} B/s per node, "
                  f"meshd {entry['idle']['meshd_cpu_pct_one_core']} %", flush=True)
            entry["load"] = load_window(bed, hosts, meshd, args)
            print(f"[scale] N={n}: load {entry['load']['per_node']['tx_bytes']} B/s per node, "
                  f"meshd {entry['load']['meshd_cpu_pct_one_core']} %, {entry['load']['requests']}", flush=True)
            entry["meshd_restarts"] = sum(meshd_pid(bed, h) != p for h, p in meshd.items())
            stop(bed, hosts)
            if not args.no_static:
                time.sleep(2)
                _, fs = form(bed, bins, secret, hosts, mdns=False, timeout=args.form_timeout)
                entry["formation_static"] = fs
                print(f"[scale] N={n}: static-seed formation {fs}", flush=True)
                stop(bed, hosts)
            time.sleep(2)  # services withdrawn before the next size
    finally:
        bed.down()
    results["seconds"] = round(time.monotonic() - started)
    results["loadavg_end"] = round(os.getloadavg()[0], 2)
    results["growth"] = growth(results)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "scale.json").write_text(json.dumps(results, indent=2) + "\n")
    md = report(results, args.command)
    Path(args.out, "scale.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
