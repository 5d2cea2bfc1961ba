#!/usr/bin/env python3
"""Model copy over the mesh against a plain TCP copy of the same file over the same link.

Two hosts of the multi-host test bed (tools/testbed.sh: network namespaces on a private bridge,
198.18.0.0/24; needs root). h1's model store holds a file of random bytes; h2 copies it:
- **tcp**: a plain TCP stream from h1 to h2 (Python, `socket.sendfile` into 1 MiB writes to a file
  on h2), no encryption, no checks: the link's floor for moving these bytes;
- **mesh**: `meshctl models copy big --to h2` (h2 pulls from h1 over a mesh tunnel: CURVE
  encryption, credit flow control, sha256 of the whole file, fsync, rename into the store).
Alternated `--rounds` times per link; the ratio is taken per round (same machine state) and its
median reported. Links: the veth as it is (unshaped), and shaped to 1 and 2.5 Gbit/s with `tc tbf`
on both hosts' eth0 (office LANs). CPU seconds of each meshd per GB copied come from /proc.

    benches/model_copy.sh [--size-mb 512] [--rounds 3] [--links raw,1gbit,2500mbit]
Writes benches/model-copy.md and benches/model-copy.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "Tests" / "e2e"), str(ROOT / "Tests" / "mesh"), str(ROOT / "Tests" / "testbed")]

from meshd_e2e import wait_until  # noqa: E402
from mesh_helpers import MeshBinaries, make_secret  # noqa: E402
from testbed_helpers import Bed, BedNode  # noqa: E402

TCP_PORT = 9100
RECEIVER = r"""
import socket, sys, time
path, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((host, port)); s.listen(1)
print("ready", flush=True)
c, _ = s.accept(); t0 = time.monotonic(); n = 0
with open(path, "wb") as f:
    while True:
        b = c.recv(1 << 20)
        if not b: break
        f.write(b); n += len(b)
    f.flush()
print(n, time.monotonic() - t0, flush=True)
"""
SENDER = r"""
import socket, sys
path, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = socket.create_connection((host, port))
with open(path, "rb") as f: c.sendfile(f)
c.close()
"""


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def meshd_pid(bed: Bed, host: str) -> int:
    return int((bed.dir(host) / "meshd.pid").read_text().strip())


def tcp_copy(bed: Bed, src: Path, dst: Path) -> float:
    dst.unlink(missing_ok=True)
    recv = subprocess.Popen([str(ROOT / "tools" / "testbed.sh"), "--prefix", bed.prefix, "exec", "h2", sys.executable, "-c", RECEIVER,
                             str(dst), bed.ip("h2"), str(TCP_PORT)], stdout=subprocess.PIPE, text=True)
    assert recv.stdout is not None
    assert recv.stdout.readline().strip() == "ready"
    bed.exec("h1", sys.executable, "-c", SENDER, str(src), bed.ip("h2"), str(TCP_PORT), timeout=300)
    out = recv.stdout.readline().split()
    recv.wait(30)
    n, secs = int(out[0]), float(out[1])
    assert n == src.stat().st_size, (n, src.stat().st_size)
    dst.unlink()
    return secs


def mesh_copy(bins: MeshBinaries, node: BedNode, store2: Path) -> float:
    (store2 / "big.gguf").unlink(missing_ok=True)
    wait_until(lambda: all(w.get("node") != "h2" for m in models(bins, node) if m["name"] == "big" for w in m["where"]), 10,
               what="h2 to leave big's places")
    t0 = time.monotonic()
    r = subprocess.run([str(bins.meshctl), "models", "copy", "big", "--to", "h2", "--socket", str(node.admin_socket)],
                       capture_output=True, text=True, timeout=600)
    secs = time.monotonic() - t0
    assert r.returncode == 0 and "h2: done" in r.stdout, r.stdout + r.stderr
    return secs


def models(bins: MeshBinaries, node: BedNode) -> list[dict]:
    r = subprocess.run([str(bins.meshctl), "models", "--json", "--socket", str(node.admin_socket)], capture_output=True, text=True, timeout=15)
    return json.loads(r.stdout) if r.returncode == 0 else []


def shape(bed: Bed, rate: str | None) -> None:
    for h in ("h1", "h2"):
        bed.exec(h, "tc", "qdisc", "del", "dev", "eth0", "root", check=False)
        if rate:
            bed.exec(h, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate, "burst", "512kb", "latency", "50ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meshd", required=True)
    ap.add_argument("--meshctl", required=True)
    ap.add_argument("--size-mb", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--links", default="raw,1gbit,2500mbit", help="raw (the veth as it is) and/or tc tbf rates such as 1gbit")
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--command", default="benches/model_copy.sh")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("model_copy: needs root (the test bed makes network namespaces)")
    os.environ["MESHD_BIN"], os.environ["MESHCTL_BIN"] = args.meshd, args.meshctl
    work = Path("/tmp/mtbcopy-work")
    subprocess.run(["rm", "-rf", str(work)])
    work.mkdir()
    bins = MeshBinaries(work / "bin")
    bed = Bed("mtbcopy", 2)
    bed.down()
    started = time.monotonic()
    load0 = os.getloadavg()[0]
    results: dict = {"size_bytes": args.size_mb << 20, "rounds": args.rounds, "links": {}}
    try:
        bed.up()
        secret = make_secret(bins, work / "mesh.secret")
        stores = {h: bed.dir(h) / "store" for h in ("h1", "h2")}
        for d in stores.values():
            d.mkdir(parents=True, exist_ok=True)
        src = stores["h1"] / "big.gguf"
        with src.open("wb") as f:
            for _ in range(args.size_mb // 4):
                f.write(os.urandom(4 << 20))
        nodes = {}
        for h, peers in (("h1", []), ("h2", ["h1"])):
            nodes[h] = BedNode(bed, bins, h, secret, mdns=False, peers=peers, engines=[],
                               extra={"models": {"dir": str(stores[h]), "rescan_seconds": 1}})
            nodes[h].start()
            nodes[h].wait_ready()
        wait_until(lambda: any(m["name"] == "big" for m in models(bins, nodes["h2"])), 20, what="h2 to see h1's model")
        # Warm-up: h1 hashes its file once (cached), both sides fault the file into the page cache.
        mesh_copy(bins, nodes["h2"], stores["h2"])
        tcp_copy(bed, src, work / "tcp.out")
        for link in args.links.split(","):
            shape(bed, None if link == "raw" else link)
            rows = []
            for i in range(args.rounds):
                t = tcp_copy(bed, src, bed.dir("h2") / "tcp.out")
                c1, c2 = cpu_seconds(meshd_pid(bed, "h1")), cpu_seconds(meshd_pid(bed, "h2"))
                m = mesh_copy(bins, nodes["h2"], stores["h2"])
                d1, d2 = cpu_seconds(meshd_pid(bed, "h1")) - c1, cpu_seconds(meshd_pid(bed, "h2")) - c2
                gb = (args.size_mb << 20) / 1e9
                rows.append({"tcp_s": round(t, 3), "mesh_s": round(m, 3), "ratio": round(t / m, 3),
                             "tcp_MBps": round(gb * 1000 / t, 1), "mesh_MBps": round(gb * 1000 / m, 1),
                             "cpu_s_per_GB_sender": round(d1 / gb, 2), "cpu_s_per_GB_receiver": round(d2 / gb, 2)})
                print(link, i, rows[-1], flush=True)
            results["links"][link] = {"rounds": rows, "median_ratio": statistics.median(r["ratio"] for r in rows)}
        shape(bed, None)
    finally:
        for n in ("h2", "h1"):
            bed.sh("stop-meshd", n, check=False)
        bed.down()
    results["seconds"] = round(time.monotonic() - started)
    results["load_start"], results["load_end"] = round(load0, 2), round(os.getloadavg()[0], 2)
    Path(args.out, "model-copy.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Model copy over the mesh against plain TCP",
        "",
        f"Made by `{args.command}` in {results['seconds']} s (load average {results['load_start']} at the start, "
        f"{results['load_end']} at the end; 2 shared cores). Raw numbers: `model-copy.json`.",
        "",
        f"Two test-bed hosts (network namespaces, veth into a private bridge). h2 copies a {args.size_mb} MiB file of random "
        "bytes from h1's model store: **tcp** is a plain TCP stream (Python `sendfile` into 1 MiB writes to a file); **mesh** is "
        "`meshctl models copy big --to h2` (a mesh tunnel: CURVE encryption, credit flow control, the whole file's sha256, fsync, "
        "rename into the store), timed end to end. Alternated per round; the ratio is tcp time ÷ mesh time in the same round "
        "(1.0: as fast as plain TCP). `1gbit`, `2500mbit`: both hosts' eth0 shaped with `tc qdisc ... tbf rate RATE` (office LANs).",
        "",
        "| link | round | tcp s (MB/s) | mesh s (MB/s) | mesh ÷ tcp throughput | meshd CPU s per GB: sender / receiver |",
        "|---|---|---|---|---|---|",
    ]
    for link, r in results["links"].items():
        for i, row in enumerate(r["rounds"]):
            lines.append(f"| {link} | {i + 1} | {row['tcp_s']} ({row['tcp_MBps']}) | {row['mesh_s']} ({row['mesh_MBps']}) | "
                         f"{row['ratio']} | {row['cpu_s_per_GB_sender']} / {row['cpu_s_per_GB_receiver']} |")
    lines += ["", "| link | median mesh ÷ tcp throughput | target ≥ 0.8 |", "|---|---|---|"]
    for link, r in results["links"].items():
        lines.append(f"| {link} | {r['median_ratio']} | {'met' if r['median_ratio'] >= 0.8 else 'not met'} |")
    Path(args.out, "model-copy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
