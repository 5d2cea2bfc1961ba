#!/usr/bin/env python3
"""A fake cloud LLM provider over real TLS, for meshd's tests (Python 3 standard library only).

Speaks five dialects, each with its own authentication and error shapes:
  OpenAI     POST /v1/chat/completions                       Authorization: Bearer KEY
             (also at /openai/v1/chat/completions: Groq's base URL)
  Azure      POST /openai/deployments/{d}/chat/completions?api-version=...   api-key: KEY
  Anthropic  POST /v1/messages                               x-api-key: KEY, anthropic-version
  Gemini     POST /v1beta/models/{m}:generateContent         x-goog-api-key: KEY (or ?key=)
             POST /v1beta/models/{m}:streamGenerateContent?alt=sse
  Bedrock    POST /model/{modelId}/converse                  AWS SigV4 (AWS4-HMAC-SHA256), recomputed
             POST /model/{modelId}/converse-stream           here: access key --aws-access-key-id, secret
                                                             key --api-key, region --aws-region, service
                                                             bedrock, x-amz-date within 5 minutes, and the
                                                             --aws-session-token if one is given; the
                                                             stream in event-stream framing (CRC32s)

Answers are deterministic: N tokens "tok0 tok1 ..." (N from max_tokens / maxOutputTokens, else
--default-tokens), usage = prompt words + N. Failures are injected by model (or deployment) name:
a name containing `fail-429` answers 429 with `retry-after: 2`, `fail-529` answers 529 (overloaded)
with `retry-after: 3`, `fail-500` answers 500 (Bedrock: 429 ThrottlingException and 503
ServiceUnavailableException without retry-after, 500 InternalServerException),
`cut-stream` stops a stream mid-way without its end marker (Bedrock: in the middle of a message; a
whole answer is cut short of its Content-Length), `stream-error` sends the dialect's error event
(Bedrock: an exception message) mid-stream and ends it, `slow` waits --slow-delay seconds before each chunk,
`overbill` (OpenAI dialect) bills 1,000 prompt tokens more than the prompt has.

GET /_stats returns request counts per path and model. With --billing-log FILE every OpenAI-dialect
answer sent whole is appended to FILE as a JSON line (model, prompt_tokens, completion_tokens) once
its last byte is written: what this provider billed, kept across restarts of the fake. Binds 127.0.0.1 only and prints
`LISTENING 127.0.0.1:PORT` on stdout once it accepts connections (--port 0 picks a free port).

  fake_cloud.py --cert server.pem --key server.key [--port 0] [--api-key test-key]
"""
import argparse
import json
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fake_bedrock import BedrockMixin

HOST = "127.0.0.1"


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.total = 0
        self.unauthorized = 0
        self.by_path = {}
        self.by_model = {}
        self.by_path_model = {}

    def count(self, path, model):
        with self.lock:
            self.total += 1
            self.by_path[path] = self.by_path.get(path, 0) + 1
            self.by_model[model] = self.by_model.get(model, 0) + 1
            key = f"{path} {model}"
            self.by_path_model[key] = self.by_path_model.get(key, 0) + 1

    def reject(self):
        with self.lock:
            self.unauthorized += 1

    def json(self):
        with self.lock:
            return {"total": self.total, "unauthorized": self.unauthorized, "by_path": dict(self.by_path),
                    "by_model": dict(self.by_model), "by_path_model": dict(self.by_path_model)}


def words(text):
    return len(text.split()) if isinstance(text, str) else 0


def content_words(content):
    """Words of an OpenAI/Anthropic message content (a string or a list of text parts)."""
    if isinstance(content, list):
        return sum(words(p.get("text", "")) for p in content if isinstance(p, dict))
    return words(content)


def tokens(n):
    """The n content pieces: "tok0", " tok1", ..."""
    return [("" if i == 0 else " ") + f"tok{i}" for i in range(n)]


class Handler(BedrockMixin, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-cloud/1"

    def log_message(self, fmt, *args):  # quiet unless --verbose
        if self.server.options.verbose:
            sys.stderr.write("fake_cloud: " + (fmt % args) + "\n")

    # ---- plumbing

    def send_json(self, status, obj, headers=()):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def start_sse(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def chunk(self, data):
        if self.slow:
            time.sleep(self.server.options.slow_delay)
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def event(self, obj, name=None):
        head = f"event: {name}\n" if name else ""
        self.chunk((head + "data: " + json.dumps(obj) + "\n\n").encode())

    def end_chunks(self):
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n > 0 else b""
        self.raw_body = raw  # Bedrock's signature covers the bytes
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return None

    # ---- routing

    def do_GET(self):
        if urllib.parse.urlsplit(self.path).path == "/_stats":
            self.send_json(200, self.server.stats.json())
        else:
            self.send_json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        path, query = url.path, urllib.parse.parse_qs(url.query)
        body = self.read_body()
        if body is None or not isinstance(body, dict):
            self.send_json(400, {"error": {"message": "body is not a JSON object", "type": "invalid_request_error"}})
            return
        if path in ("/v1/chat/completions", "/openai/v1/chat/completions"):  # OpenAI; Groq's base URL ends in /openai/v1
            self.openai(path, body, body.get("model", ""), self.bearer())
        elif path.startswith("/openai/deployments/") and path.endswith("/chat/completions"):
            deployment = path[len("/openai/deployments/"):-len("/chat/completions")]
            if not query.get("api-version"):
                self.send_json(404, {"error": {"code": "404", "message": "Resource not found"}})
                return
            self.openai(path, body, deployment, self.headers.get("api-key"), azure=True)
        elif path == "/v1/messages":
            self.anthropic(path, body)
        elif path.startswith("/v1beta/models/") and ":" in path:
            model, _, method = path[len("/v1beta/models/"):].rpartition(":")
            if method not in ("generateContent", "streamGenerateContent"):
                self.send_json(404, {"error": {"code": 404, "message": f"method {method} not found", "status": "NOT_FOUND"}})
                return
            if method == "streamGenerateContent" and query.get("alt") != ["sse"]:
                self.send_json(400, {"error": {"code": 400, "message": "this fake serves alt=sse streams only",
                                               "status": "INVALID_ARGUMENT"}})
                return
            key = self.headers.get("x-goog-api-key") or (query.get("key") or [None])[0]
            self.gemini(path, body, model, method == "streamGenerateContent", key)
        elif path.startswith("/model/") and path.endswith(("/converse", "/converse-stream")):
            model, _, method = path[len("/model/"):].rpartition("/")
            self.bedrock(path, url.query, body, urllib.parse.unquote(model), method == "converse-stream")
        else:
            self.send_json(404, {"error": {"message": f"unknown path {path}", "type": "invalid_request_error"}})

    def bearer(self):
        auth = self.headers.get("Authorization") or ""
        return auth[len("Bearer "):] if auth.startswith("Bearer ") else None

    def check(self, key, path, model, error):
        """Counts the request; answers 401 (in `error`'s shape) on a wrong key or an injected failure."""
        self.server.stats.count(path, model)
        self.slow = "slow" in model
        if key != self.server.options.api_key:
            self.server.stats.reject()
            shown = key if key is not None else "(none)"
            self.send_json(401, error(401, f"Incorrect API key provided: {shown}"))
            return False
        if "fail-429" in model:
            self.send_json(429, error(429, "Rate limit reached for requests"), headers=[("retry-after", "2")])
            return False
        if "fail-529" in model:
            self.send_json(529, error(529, "Overloaded"), headers=[("retry-after", "3")])
            return False
        if "fail-500" in model:
            self.send_json(500, error(500, "The server had an error while processing your request"))
            return False
        return True

    def count_tokens(self, value):
        n = value if isinstance(value, int) and value > 0 else self.server.options.default_tokens
        return min(n, 100_000)

    def cut_whole(self, obj):
        """A whole answer that stops half-way through its declared Content-Length."""
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True

    def stops_here(self, model, i, pieces, error, event_name=None):
        """Half-way through the pieces of a `cut-stream` or `stream-error` model, ends the stream
        (after an error event in `error`'s shape for `stream-error`); True when it did."""
        if i != len(pieces) // 2 or not ("cut-stream" in model or "stream-error" in model):
            return False
        if "stream-error" in model:
            self.event(error(500, "Overloaded"), event_name)
        self.end_chunks()
        return True

    # ---- OpenAI and Azure

    def openai(self, path, body, model, key, azure=False):
        def error(status, message):
            if azure:
                return {"error": {"code": str(status), "message": message}}
            kind = {401: "invalid_request_error", 429: "requests", 500: "server_error", 529: "server_error"}[status]
            code = {401: "invalid_api_key", 429: "rate_limit_exceeded", 500: None, 529: "overloaded"}[status]
            return {"error": {"message": message, "type": kind, "param": None, "code": code}}

        if not self.check(key, path, model, error):
            return
        if not azure and not model:
            self.send_json(400, {"error": {"message": "you must provide a model parameter", "type": "invalid_request_error"}})
            return
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        n = self.count_tokens(limit)
        prompt = sum(content_words(m.get("content")) for m in body.get("messages") or [] if isinstance(m, dict))
        if "overbill" in model:
            # As real providers bill image URLs, tool definitions or their own system prompt.
            prompt += 1000
        usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
        finish = "length" if limit else "stop"
        base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": model}
        pieces = tokens(n)
        if not body.get("stream"):
            answer = dict(base, object="chat.completion", usage=usage, choices=[
                {"index": 0, "message": {"role": "assistant", "content": "".join(pieces)}, "finish_reason": finish}])
            if "cut-stream" in model:
                self.cut_whole(answer)
            else:
                self.send_json(200, answer)
                self.bill(model, usage)
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta, finish_reason=None):
            self.event(dict(base, object="chat.completion.chunk",
                            choices=[{"index": 0, "delta": delta, "finish_reason": finish_reason}]))

        self.start_sse()
        chunk({"role": "assistant", "content": ""})
        for i, piece in enumerate(pieces):
            if self.stops_here(model, i, pieces, error):
                return
            chunk({"content": piece})
        chunk({}, finish)
        if include_usage:
            self.event(dict(base, object="chat.completion.chunk", choices=[], usage=usage))
        self.chunk(b"data: [DONE]\n\n")
        self.end_chunks()
        self.bill(model, usage)

    def bill(self, model, usage):
        path = self.server.options.billing_log
        if path:
            line = json.dumps({"model": model, "prompt_tokens": usage["prompt_tokens"],
                               "completion_tokens": usage["completion_tokens"]})
            with self.server.stats.lock, open(path, "a") as f:
                f.write(line + "\n")

    # ---- Anthropic

    def anthropic(self, path, body):
        model = body.get("model", "")

        def error(status, message):
            kind = {401: "authentication_error", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}[status]
            return {"type": "error", "error": {"type": kind, "message": message}}

        if not self.headers.get("anthropic-version"):
            self.server.stats.count(path, model)
            self.send_json(400, {"type": "error", "error": {"type": "invalid_request_error",
                                                             "message": "anthropic-version: header is required"}})
            return
        if not self.check(self.headers.get("x-api-key"), path, model, error):
            return
        if not isinstance(body.get("max_tokens"), int):
            self.send_json(400, {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"}})
            return
        n = self.count_tokens(body["max_tokens"])
        system = body.get("system")
        prompt = content_words(system) + sum(content_words(m.get("content")) for m in body.get("messages") or [])
        stop = "end_turn" if n < body["max_tokens"] else "max_tokens"
        pieces = tokens(n)
        message = {"id": "msg_fake", "type": "message", "role": "assistant", "model": model, "stop_sequence": None}
        if not body.get("stream"):
            answer = dict(message, content=[{"type": "text", "text": "".join(pieces)}], stop_reason=stop,
                          usage={"input_tokens": prompt, "output_tokens": n})
            if "cut-stream" in model:
                self.cut_whole(answer)
            else:
                self.send_json(200, answer)
                self.bill(model, usage)
            return
        self.start_sse()
        self.event({"type": "message_start", "message": dict(message, content=[], stop_reason=None,
                                                              usage={"input_tokens": prompt, "output_tokens": 1})},
                   "message_start")
        self.event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                   "content_block_start")
        self.event({"type": "ping"}, "ping")
        for i, piece in enumerate(pieces):
            if self.stops_here(model, i, pieces, error, "error"):
                return
            self.event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
                       "content_block_delta")
        self.event({"type": "content_block_stop", "index": 0}, "content_block_stop")
        self.event({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": n}}, "message_delta")
        self.event({"type": "message_stop"}, "message_stop")
        self.end_chunks()

    # ---- Gemini

    def gemini(self, path, body, model, stream, key):
        def error(status, message):
            kind = {401: "UNAUTHENTICATED", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 529: "UNAVAILABLE"}[status]
            return {"error": {"code": status, "message": message, "status": kind}}

        if not self.check(key, path, model, error):
            return
        config = body.get("generationConfig") or {}
        limit = config.get("maxOutputTokens")
        n = self.count_tokens(limit)
        system = body.get("systemInstruction") or {}
        prompt = sum(words(p.get("text", "")) for p in system.get("parts") or [])
        for c in body.get("contents") or []:
            prompt += sum(words(p.get("text", "")) for p in c.get("parts") or [])
        finish = "MAX_TOKENS" if limit else "STOP"
        usage = {"promptTokenCount": prompt, "candidatesTokenCount": n, "totalTokenCount": prompt + n}
        pieces = tokens(n)

        def candidate(text, finish_reason=None):
            c = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
            if finish_reason:
                c["finishReason"] = finish_reason
            return c

        if not stream:
            answer = {"candidates": [candidate("".join(pieces), finish)], "usageMetadata": usage, "modelVersion": model}
            if "cut-stream" in model:
                self.cut_whole(answer)
            else:
                self.send_json(200, answer)
                self.bill(model, usage)
            return
        self.start_sse()
        for i, piece in enumerate(pieces):
            if self.stops_here(model, i, pieces, error):
                return
            last = i == len(pieces) - 1
            event = {"candidates": [candidate(piece, finish if last else None)], "modelVersion": model,
                     "usageMetadata": usage if last else {"promptTokenCount": prompt, "totalTokenCount": prompt}}
            self.chunk(("data: " + json.dumps(event) + "\r\n\r\n").encode())
        if not pieces:
            self.chunk(("data: " + json.dumps({"candidates": [candidate("", finish)], "usageMetadata": usage}) + "\r\n\r\n").encode())
        self.end_chunks()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # listen backlog: hundreds of connections may arrive at once

    def __init__(self, options, context):
        self.options = options
        self.context = context
        self.stats = Stats()
        super().__init__((HOST, options.port), Handler)

    def finish_request(self, request, client_address):
        # The TLS handshake runs here, on the connection's own thread, so a client that never
        # completes it cannot stall the accept loop.
        if self.context is not None:
            try:
                request.settimeout(10)
                request = self.context.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except (ssl.SSLError, OSError) as e:
                if self.options.verbose:
                    sys.stderr.write(f"fake_cloud: TLS handshake from {client_address} failed: {e}\n")
                request.close()
                return
        try:
            super().finish_request(request, client_address)
        finally:
            try:
                request.close()
            except OSError:
                pass

    def handle_error(self, request, client_address):
        if self.options.verbose:
            super().handle_error(request, client_address)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--cert", help="server certificate (PEM); without --cert/--key the server speaks plain HTTP")
    p.add_argument("--key", help="server private key (PEM)")
    p.add_argument("--api-key", default="test-key", help="the key every dialect expects (Bedrock: the secret access key)")
    p.add_argument("--aws-access-key-id", default="AKIDFAKECLOUD0000001")
    p.add_argument("--aws-region", default="us-east-1")
    p.add_argument("--aws-session-token", help="Bedrock: the session token requests must carry (default: none allowed)")
    p.add_argument("--default-tokens", type=int, default=8)
    p.add_argument("--slow-delay", type=float, default=0.2)
    p.add_argument("--billing-log", help="append every whole OpenAI-dialect answer's usage to this file (JSON lines)")
    p.add_argument("--verbose", action="store_true")
    options = p.parse_args()
    context = None
    if options.cert or options.key:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(options.cert, options.key)
    server = Server(options, context)
    host, port = server.server_address[:2]
    print(f"LISTENING {host}:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
