#!/usr/bin/env python3
"""Where meshd's CPU goes, by cause, from a `perf record -g` profile (stdlib only).

  perf record -e cpu-clock -F 4999 -g -p MESHD_PID -o perf.data -- sleep 5   # while load runs
  perf script -i perf.data -F comm,tid,ip,sym,dso | swift-demangle --simplified \\
      | benches/perf_breakdown.py [--us-per-req 290]

Every sample is charged to ONE cause, so the shares add up to 100 %: first the stack-wide rules
(socket I/O, request-id randomness: whatever they call is their cost), then the frame nearest the
leaf that matches one of the owner rules (so malloc inside the JSON parser counts as JSON parse,
a futex inside a continuation resume counts as a thread hand-off). With --us-per-req (meshd CPU per
request measured by run.sh) the shares are also given in µs/request.
"""
import argparse
import re
import sys

# Charged if any frame of the stack matches (checked first, in order).
STACK_RULES = [
    ("kernel TCP send/recv (incl. waking the peer process)",
     r"tcp_sendmsg|tcp_recvmsg|tcp_v4_rcv|__sys_recvfrom|sock_recvmsg|sock_sendmsg|sock_write_iter|sock_read_iter"),
    ("request ids: getrandom syscalls (InferenceProxy.newID)", r"InferenceProxy\.newID|getrandom"),
]
# Otherwise: the frame nearest the leaf that matches one of these decides.
OWNER_RULES = [
    ("thread hand-offs: wake / sleep (futex, sem_post, eventfd, epoll_wait, poll, context switch)",
     r"futex|sem_post|sem_wait|_dispatch_semaphore|eventfd|__schedule|finish_task_switch|do_epoll_wait|epoll_wait|"
     r"do_sys_poll|__x64_sys_poll|__poll |try_to_wake_up|_dispatch_root_queue_poke|curl_multi_wakeup|curl_multi_poll"),
    ("metrics (NodeMetrics -> swift-prometheus lookups)", r"NodeMetrics|Prometheus"),
    ("JSON parse (request + engine response)", r"JSONParser"),
    ("JSON serialise", r"JSON\.write|JSON\.serialized|JSON\.writeString|JSON\.setting"),
    ("parse/route/translate (RequestParser, Router, EngineRegistry, translators)",
     r"RequestParser|EngineRequestBuilder|ResponseTranslator|StreamTranslator|Router\.|EngineRegistry|APIResponder"),
    ("meshd proxy + server glue (InferenceProxy, HTTPServer, response building)",
     r"InferenceProxy|HTTPServer|CurrentTask|ResponseBodyWriter|HTTPServerRe"),
    ("curl thread: libcurl + Swift callbacks (header parsing, TransferState)", r"ActiveTransfer|CurlLoop|TransferState|libcurl|trimmed"),
    ("SwiftNIO (HTTP codec, channel pipeline, async channel bridge)", r"NIO|ByteBuffer|llhttp|Channel|Selector|SelectableEventLoop"),
    ("Swift Concurrency runtime (task create/run, continuations)",
     r"swift_task|swift_job|AsyncTask|Continuation|libswift_Concurrency|libdispatch"),
]
OTHER = "other (Swift runtime / libc / kernel not attributable above)"


def samples(stream):
    stack = []
    for line in stream:
        line = line.rstrip("\n")
        if not line.strip():
            if stack:
                yield stack
            stack = []
            continue
        if line.startswith(("\t", " ")):
            stack.append(line.strip())
        else:
            if stack:
                yield stack
            stack = []  # header line (comm tid)
    if stack:
        yield stack


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", nargs="?", help="perf script output (default stdin)")
    ap.add_argument("--us-per-req", type=float, default=0.0)
    a = ap.parse_args()
    stack_rules = [(name, re.compile(pat)) for name, pat in STACK_RULES]
    owner_rules = [(name, re.compile(pat)) for name, pat in OWNER_RULES]
    counts = {name: 0 for name, _ in STACK_RULES + OWNER_RULES}
    counts[OTHER] = 0
    total = 0
    with (open(a.file) if a.file else sys.stdin) as f:
        for st in samples(f):
            total += 1
            cause = None
            text = "\n".join(st)
            for name, rx in stack_rules:
                if rx.search(text):
                    cause = name
                    break
            if cause is None:
                for frame in st:  # leaf first
                    for name, rx in owner_rules:
                        if rx.search(frame):
                            cause = name
                            break
                    if cause:
                        break
            counts[cause or OTHER] += 1
    if not total:
        sys.exit("no samples")
    print(f"{total} samples")
    print(f"{'share':>7} {'µs/req':>8}  cause")
    for name, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        share = n / total
        us = f"{share * a.us_per_req:8.1f}" if a.us_per_req else f"{'':8}"
        print(f"{share * 100:6.1f}% {us}  {name}")


if __name__ == "__main__":
    main()
