#!/usr/bin/env python3
"""The floor under a mesh hop on this machine: one bare libzmq CURVE round trip between two processes.

  PY=$(tools/e2e-venv.sh) && $PY benches/zmq_floor.py [--n 5000]

A DEALER (client process) sends a 3-frame message shaped like a mesh `response` (~450 bytes) to a
ROUTER (server process) that echoes it; both use CURVE, as the mesh does. Each side's application
thread blocks in recv, so a round trip is app -> libzmq I/O thread -> TCP -> peer I/O thread -> peer
app, and back: the libzmq part of every mesh hop, with none of meshd's work or hand-offs. Prints one
JSON line (p50/p90/p99 in microseconds). Needs pyzmq (the test venv has it).
"""
import argparse
import json
import multiprocessing as mp
import socket
import time

import zmq


def serve(port: int, public: bytes, secret: bytes, ready) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.linger = 0
    s.curve_server = True
    s.curve_publickey, s.curve_secretkey = public, secret
    s.bind(f"tcp://127.0.0.1:{port}")
    ready.set()
    while True:
        frames = s.recv_multipart()
        if frames[1] == b"stop":
            break
        s.send_multipart(frames)
    s.close()
    ctx.term()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="measured round trips (after 500 warm-ups)")
    args = ap.parse_args()
    server_pub, server_sec = zmq.curve_keypair()
    client_pub, client_sec = zmq.curve_keypair()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ready = mp.Event()
    server = mp.Process(target=serve, args=(port, server_pub, server_sec, ready), daemon=True)
    server.start()
    if not ready.wait(10):
        raise SystemExit("server did not start")
    ctx = zmq.Context()
    c = ctx.socket(zmq.DEALER)
    c.linger = 0
    c.rcvtimeo = 5000
    c.curve_serverkey, c.curve_publickey, c.curve_secretkey = server_pub, client_pub, client_sec
    c.connect(f"tcp://127.0.0.1:{port}")
    message = [b"\x01\x17", b'{"req":"A-1","status":200,"headers":[["Content-Type","application/json"]]}', b"x" * 360]
    for _ in range(500):
        c.send_multipart(message)
        c.recv_multipart()
    lat = []
    for _ in range(args.n):
        t = time.perf_counter_ns()
        c.send_multipart(message)
        c.recv_multipart()
        lat.append((time.perf_counter_ns() - t) / 1000)
    c.send_multipart([b"stop"])
    server.join(5)
    c.close()
    ctx.term()
    lat.sort()
    q = lambda f: round(lat[min(len(lat) - 1, int(len(lat) * f))], 1)  # noqa: E731
    print(json.dumps({"n": len(lat), "p50_us": q(0.5), "p90_us": q(0.9), "p99_us": q(0.99), "libzmq": zmq.zmq_version()}))


if __name__ == "__main__":
    main()
