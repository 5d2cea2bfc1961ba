#!/usr/bin/env python3
"""Client side of benches/split_rpc.sh (stdlib only). Subcommands:

  layers FILE.gguf                  print the model's block count (<arch>.block_count)
  wait-port HOST:PORT SECONDS       wait until a TCP port accepts (an rpc-server is up)
  start URL --t0-ns NS ...          the head was spawned at NS (time.time_ns()): poll URL/health every
                                    20 ms, then send one request; prints one JSON line with load_ms
                                    (spawn -> healthy), ttft_ms (that request) and first_token_ms
                                    (spawn -> first token)
  request URL ...                   one streamed POST /completion; prints one JSON line
  report RAW.jsonl OUT_BASE         RAW lines -> OUT_BASE.md, OUT_BASE.json, summary on stdout

A request is `POST /completion` with `stream`, `temperature` 0, `ignore_eos`, `cache_prompt`
false and `n_predict` N: ttft_ms is the time from sending it to the first token's chunk (client
side); tokens/s is llama-server's `timings.predicted_per_second` (decode only); the generated
token ids are kept to compare split and unsplit output.
"""
import argparse
import http.client
import json
import socket
import statistics
import struct
import sys
import time
import urllib.parse


def gguf_block_count(path):
    """<general.architecture>.block_count from a GGUF header (v2/v3, little-endian)."""
    scalar = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
    with open(path, "rb") as f:
        def read(fmt):
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        def string():
            return f.read(read("<Q")).decode("utf-8", "replace")

        def value(t):
            if t == 8:
                return string()
            if t == 9:
                sub, n = read("<I"), read("<Q")
                if sub in scalar:  # skip a scalar array in one seek
                    f.seek(struct.calcsize(scalar[sub]) * n, 1)
                    return None
                for _ in range(n):
                    value(sub)
                return None
            return read(scalar[t])

        if f.read(4) != b"GGUF":
            sys.exit(f"split_rpc: {path} is not a GGUF file")
        read("<I")
        read("<Q")
        kv = {}
        for _ in range(read("<Q")):
            key = string()
            kv[key] = value(read("<I"))
            arch = kv.get("general.architecture")
            if arch and f"{arch}.block_count" in kv:
                return kv[f"{arch}.block_count"]
    sys.exit(f"split_rpc: no block_count in {path}")


def stream_completion(url, prompt, n_predict, timeout):
    u = urllib.parse.urlsplit(url)
    body = json.dumps({"prompt": prompt, "n_predict": n_predict, "temperature": 0, "ignore_eos": True,
                       "cache_prompt": False, "stream": True}).encode()
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    t0 = time.perf_counter()
    conn.request("POST", "/completion", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise SystemExit(f"split_rpc: {url}/completion answered {resp.status}: {resp.read()[:300]!r}")
    ttft = None
    tokens, content, timings = [], [], None
    for raw in resp:
        line = raw.strip()
        if not line.startswith(b"data: "):
            continue
        d = json.loads(line[6:])
        if d.get("tokens") and ttft is None:
            ttft = time.perf_counter() - t0
        tokens += d.get("tokens") or []
        content.append(d.get("content") or "")
        if d.get("stop"):
            timings = d.get("timings")
            break
    wall = time.perf_counter() - t0
    conn.close()
    if not timings:
        raise SystemExit(f"split_rpc: {url}: the stream ended without timings")
    return {"ttft_ms": round(ttft * 1000, 2) if ttft is not None else None, "wall_ms": round(wall * 1000, 1),
            "tps": round(timings["predicted_per_second"], 2), "predicted_n": timings["predicted_n"],
            "predicted_ms": round(timings["predicted_ms"], 2), "prompt_n": timings["prompt_n"],
            "prompt_ms": round(timings["prompt_ms"], 2), "tokens": tokens, "content": "".join(content)}


def wait_health(url, deadline):
    u = urllib.parse.urlsplit(url)
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.02)
    return False


def cmd_wait_port(a):
    host, port = a.hostport.rsplit(":", 1)
    deadline = time.time() + a.seconds
    while time.time() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"split_rpc: nothing accepts on {a.hostport} after {a.seconds} s")


def cmd_start(a):
    if not wait_health(a.url, a.t0_ns / 1e9 + a.timeout):
        sys.exit(f"split_rpc: {a.url}/health not 200 within {a.timeout} s")
    healthy_ns = time.time_ns()
    r = stream_completion(a.url, a.prompt, a.n_predict, a.timeout)
    r["load_ms"] = round((healthy_ns - a.t0_ns) / 1e6, 1)
    r["first_token_ms"] = round(r["load_ms"] + r["ttft_ms"], 1)
    emit(r, a.tag, f"healthy after {r['load_ms']} ms, first token after {r['first_token_ms']} ms")


def cmd_request(a):
    emit(stream_completion(a.url, a.prompt, a.n_predict, a.timeout), a.tag, "")


def emit(r, tag, note):
    """The result merged with the tag, as a JSON line on stdout; a short line for people on stderr."""
    r = dict(r, **json.loads(tag))
    print(json.dumps(r))
    what = "/".join(str(r[k]) for k in ("model", "config", "cache") if r.get(k))
    print(f"[split-rpc] {r.get('kind', '')} {what}: {note + ', ' if note else ''}{r['tps']} tokens/s, "
          f"TTFT {r['ttft_ms']} ms", file=sys.stderr)


def med(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 2) if xs else None


def cmd_report(a):
    rows = [json.loads(l) for l in open(a.raw) if l.strip()]
    meta = next((r for r in rows if r.get("kind") == "meta"), {})
    models = list(dict.fromkeys(r["model"] for r in rows if r.get("model")))
    summary = {"meta": meta, "models": {}}
    md = [f"# Model split over llama.cpp RPC: cost per token ({meta.get('when', '?')}, {meta.get('rev', '?')})", ""]
    label = meta.get("label") if meta.get("endpoints") else None
    md += [f"`benches/split_rpc.sh` on {meta.get('nproc')} cores, {meta.get('llama_server', '?')}, "
           f"{meta.get('seconds', '?')} s. Everything on 127.0.0.1. Load average at start / end: {meta.get('loadavg', '?')} "
           "(above ~1, something else was using the cores: the numbers are noisier).", "",
           "- **Configurations.** `unsplit`: one `llama-server -c %s -t %s -np 1 --cache-ram 0 --fit off`. "
           % (meta.get("ctx"), meta.get("threads")) +
           ("`rpcN`: the same head with `--rpc` to N `ggml-rpc-server -H 127.0.0.1 -p PORT -c -t %s` "
            "(each with its own empty `LLAMA_CACHE`), " % meta.get("threads") if not label else
            f"`{label}`: the same head with `--rpc {meta.get('endpoints')}` (mode mesh: endpoints set up by the caller), ") +
           "`-ngl n_layer+1-H --tensor-split 1,...,1`: the head keeps its first H = n_layer/(N+1) repeating layers "
           "(on its CPU), the workers the rest, the last worker the output layer too (llama.cpp counts it as a layer). "
           "A CPU head is no device of its own: `--list-devices` shows only `RPC0..`, and a `--tensor-split` "
           "value for the head would be ignored; its share is set with `-ngl`.",
           "- **Per request.** Streamed `POST /completion`, the same prompt, `temperature` 0, `ignore_eos`, "
           "`cache_prompt` false, `n_predict` as below. tokens/s: `timings.predicted_per_second` (decode); "
           "TTFT: client-side, request sent to first token chunk (prompt processing included). "
           "added ms/token/worker = (1000/tps_split - 1000/tps_unsplit) / workers, from the medians of ms/token.",
           "- **Head start.** Spawn to `/health` 200, and spawn to the first token of a first request. "
           "1st head: the rpc-servers' `-c` caches are empty (cold); 2nd head (after stopping the 1st): they hold "
           "every tensor above ggml-rpc's 10 MiB hash threshold, so the head sends a hash instead of those bytes "
           "(warm). Smaller tensors are always sent.",
           "- **Output.** The generated token ids of every split request (head starts included) against "
           "the first unsplit round."]
    for m in models:
        mr = [r for r in rows if r.get("model") == m and r["kind"] in ("start", "round")]
        cfgs = list(dict.fromkeys(r["config"] for r in mr))
        base = [r for r in mr if r["config"] == "unsplit" and r["kind"] == "round"]
        base_ms = med([1000 / r["tps"] for r in base]) if base else None
        base_tokens = base[0]["tokens"] if base else None
        info = next((r for r in rows if r.get("model") == m and r["kind"] == "model"), {})
        md += ["", f"## {m}: {info.get('file', '?')}", "",
               f"{info.get('size_mb', '?')} MB, {info.get('layers', '?')} layers; {meta.get('n_predict')} tokens per request, "
               f"{meta.get('rounds')} rounds (configurations alternating, ABBA), medians.", "",
               "| config | workers | layers head / workers | tokens/s | ms/token | added ms/token/worker | TTFT | "
               "start -> healthy, 1st / 2nd head | start -> first token, 1st / 2nd head | output = unsplit |",
               "|---|---|---|---|---|---|---|---|---|---|"]
        ms = summary["models"][m] = {"file": info.get("file"), "size_mb": info.get("size_mb"), "layers": info.get("layers"), "configs": {}}
        for c in cfgs:
            cr = [r for r in mr if r["config"] == c]
            rounds = [r for r in cr if r["kind"] == "round"]
            starts = [r for r in cr if r["kind"] == "start"]
            w = cr[0].get("workers", 0)
            ms_tok = med([1000 / r["tps"] for r in rounds])
            added = round((ms_tok - base_ms) / w, 2) if w and ms_tok is not None and base_ms is not None else None
            same = None
            if base_tokens is not None:
                same = all(r["tokens"] == base_tokens for r in rounds + starts)
            loads = [s["load_ms"] for s in starts]
            firsts = [s["first_token_ms"] for s in starts]
            d = ms["configs"][c] = {
                "workers": w, "head_layers": cr[0].get("head_layers"), "ngl": cr[0].get("ngl"),
                "tensor_split": cr[0].get("tensor_split"), "endpoints": cr[0].get("endpoints"),
                "tps": med([r["tps"] for r in rounds]), "ms_per_token": ms_tok, "added_ms_per_token_per_worker": added,
                "ttft_ms": med([r["ttft_ms"] for r in rounds]), "prompt_ms": med([r["prompt_ms"] for r in rounds]),
                "load_ms": loads, "first_token_ms": firsts, "output_equals_unsplit": same,
                "rounds": [{k: r[k] for k in ("tps", "ttft_ms", "prompt_ms", "predicted_n", "wall_ms")} for r in rounds],
                "starts": [{k: s[k] for k in ("load_ms", "ttft_ms", "first_token_ms", "cache")} for s in starts],
            }
            layers = f"{d['head_layers']} / {info.get('layers', 0) - d['head_layers']} + output" if w else "all / -"
            fmt = lambda xs: " / ".join(f"{x / 1000:.2f} s" for x in xs) or "-"  # noqa: E731
            md.append(f"| {c} | {w} | {layers} | {d['tps']} | {ms_tok} | {added if added is not None else '-'} | "
                      f"{d['ttft_ms']} ms | {fmt(loads)} | {fmt(firsts)} | "
                      f"{'-' if c == 'unsplit' else {True: 'yes', False: 'NO', None: '?'}[same]} |")
    md += ["", "## Summary", ""]
    for m, ms in summary["models"].items():
        cs = ms["configs"]
        base = cs.get("unsplit", {})
        parts = []
        for c, d in cs.items():
            if c == "unsplit":
                continue
            st = {s["cache"]: s["first_token_ms"] for s in d["starts"]}
            parts.append(f"{c}: {d['tps']} tokens/s, +{d['added_ms_per_token_per_worker']} ms/token per worker, "
                         f"output {'identical' if d['output_equals_unsplit'] else 'DIFFERENT'}; new head to first token "
                         + ", ".join(f"{k} {v / 1000:.2f} s" for k, v in st.items()))
        md.append(f"- **{m}** ({ms['size_mb']} MB, {ms['layers']} layers): unsplit {base.get('tps')} tokens/s "
                  f"({base.get('ms_per_token')} ms/token), new head to first token "
                  + " / ".join(f"{s['first_token_ms'] / 1000:.2f} s" for s in base.get("starts", [])) + "; " + "; ".join(parts) + ".")
    md += ["", "Rerun: `benches/split_rpc.sh` (`MODELS=split ROUNDS=3` for a quick one; knobs in its header). "
           "Over meshd relays: `SPLIT_RPC_ENDPOINTS=127.0.0.1:P1,127.0.0.1:P2 SPLIT_LABEL=mesh-relay "
           "benches/split_rpc.sh` (writes `split-rpc-mesh-relay.md/.json`). The machine has 2 shared, noisy cores: "
           "compare within one run."]
    open(a.out_base + ".json", "w").write(json.dumps(summary, indent=1) + "\n")
    open(a.out_base + ".md", "w").write("\n".join(md) + "\n")
    print("\n".join(md))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("layers")
    p.add_argument("gguf")
    p = sub.add_parser("wait-port")
    p.add_argument("hostport")
    p.add_argument("seconds", type=float)
    for name in ("start", "request"):
        p = sub.add_parser(name)
        p.add_argument("url")
        p.add_argument("--prompt", required=True)
        p.add_argument("--n-predict", type=int, required=True)
        p.add_argument("--timeout", type=float, default=120)
        p.add_argument("--tag", default="{}", help="JSON object merged into the output line")
        if name == "start":
            p.add_argument("--t0-ns", type=int, required=True)
    p = sub.add_parser("report")
    p.add_argument("raw")
    p.add_argument("out_base")
    a = ap.parse_args()
    if a.cmd == "layers":
        print(gguf_block_count(a.gguf))
    else:
        {"wait-port": cmd_wait_port, "start": cmd_start, "request": cmd_request, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
