"""AWS Bedrock Runtime for the fake cloud (fake_cloud.py): Converse and ConverseStream behind a
SigV4 check recomputed here from the request as received (Python standard library only).

The stream is sent in AWS event-stream framing: each message is
  total length (4 bytes BE) | headers length (4) | CRC32 of those 8 | headers | payload | CRC32 of all before
with string headers `:event-type`, `:content-type`, `:message-type` (an exception message carries
`:exception-type` instead of `:event-type`). Messages are written in two pieces, so a reader meets
messages split across reads.
"""
import calendar
import hashlib
import hmac
import json
import struct
import time
import urllib.parse
import zlib

ERROR_TYPE_SUFFIX = ":http://internal.amazon.com/coral/com.amazon.coral.service/"
MAX_SKEW_SECONDS = 300


def event_message(headers, payload):
    """One event-stream message with string-valued headers."""
    h = b""
    for name, value in headers:
        n, v = name.encode(), value.encode()
        h += bytes([len(n)]) + n + b"\x07" + struct.pack(">H", len(v)) + v
    prelude = struct.pack(">II", 12 + len(h) + len(payload) + 4, len(h))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + h + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(kind, obj):
    return event_message([(":event-type", kind), (":content-type", "application/json"), (":message-type", "event")],
                         json.dumps(obj).encode())


def exception(kind, message):
    return event_message([(":exception-type", kind), (":content-type", "application/json"), (":message-type", "exception")],
                         json.dumps({"message": message}).encode())


def uri_encode(text):
    return urllib.parse.quote(text, safe="~")


def canonical_uri(raw_path):
    """The path as received, dot segments and empty segments removed, each segment encoded again
    (SigV4 for every service but S3)."""
    segments = []
    for s in raw_path.split("/"):
        if s in ("", "."):
            continue
        if s == "..":
            if segments:
                segments.pop()
            continue
        segments.append(s)
    trailing = "/" if raw_path.endswith("/") and segments else ""
    return "/" + "/".join(uri_encode(s) for s in segments) + trailing


def canonical_query(raw_query):
    pairs = urllib.parse.parse_qsl(raw_query, keep_blank_values=True)
    return "&".join(f"{k}={v}" for k, v in sorted((uri_encode(k), uri_encode(v)) for k, v in pairs))


def hmac_sha256(key, text):
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


class BedrockMixin:
    """Request handling for /model/{modelId}/converse and /converse-stream."""

    def aws_error(self, status, kind, message):
        self.send_json(status, {"message": message}, headers=[("x-amzn-ErrorType", kind + ERROR_TYPE_SUFFIX)])

    def sigv4_problem(self, raw_path, raw_query):
        """None when the request is signed right for this fake; else (status, error type, message)."""
        o = self.server.options
        auth = self.headers.get("Authorization") or ""
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            return 403, "MissingAuthenticationTokenException", "Missing Authentication Token"
        fields = dict(part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 "):].split(",") if "=" in part)
        try:
            access_key, day, region, service, terminator = fields["Credential"].split("/")
            signed = fields["SignedHeaders"].split(";")
            signature = fields["Signature"]
        except (KeyError, ValueError):
            return 403, "IncompleteSignatureException", f"Authorization header requires Credential, SignedHeaders and Signature: {auth[:60]}"
        token = self.headers.get("x-amz-security-token")
        if access_key != o.aws_access_key_id or token != o.aws_session_token:
            return 403, "UnrecognizedClientException", "The security token included in the request is invalid."
        amz_date = self.headers.get("x-amz-date") or ""
        try:
            when = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
        except ValueError:
            return 403, "IncompleteSignatureException", f"Date must be in ISO-8601 'basic format'. Got '{amz_date}'."
        now = time.time()
        if abs(now - when) > MAX_SKEW_SECONDS:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now - MAX_SKEW_SECONDS))
            return 403, "InvalidSignatureException", f"Signature expired: {amz_date} is now earlier than {stamp} ({time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))} - 5 min.)"
        if day != amz_date[:8] or terminator != "aws4_request":
            return 403, "InvalidSignatureException", f"Credential should be scoped to a valid date and aws4_request, got {fields['Credential']}"
        if region != o.aws_region:
            return 403, "InvalidSignatureException", f"Credential should be scoped to a valid region, not '{region}'."
        if service != "bedrock":
            return 403, "InvalidSignatureException", "Credential should be scoped to correct service: 'bedrock'."
        missing = {"host", "x-amz-date"} - set(signed) | ({"x-amz-security-token"} - set(signed) if token else set())
        if missing:
            return 403, "InvalidSignatureException", f"Signed headers must include {', '.join(sorted(missing))}"
        payload_hash = hashlib.sha256(self.raw_body).hexdigest()
        claimed = self.headers.get("x-amz-content-sha256")
        if claimed is not None and claimed != payload_hash:
            return 400, "InvalidSignatureException", "The provided 'x-amz-content-sha256' header does not match what was computed."
        canonical_headers = ""
        for name in signed:
            values = self.headers.get_all(name) or []
            canonical_headers += name + ":" + ",".join(" ".join(v.split()) for v in values) + "\n"
        canonical = "\n".join([self.command, canonical_uri(raw_path), canonical_query(raw_query), canonical_headers, ";".join(signed),
                               payload_hash])
        scope = f"{day}/{region}/{service}/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        key = ("AWS4" + o.api_key).encode()
        for part in (day, region, service, "aws4_request"):
            key = hmac_sha256(key, part)
        expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            return 403, "InvalidSignatureException", (
                "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key "
                f"and signing method. Consult the service documentation for details.\n\nThe Canonical String for this request should have been\n'{canonical}'")
        return None

    def bedrock(self, path, raw_query, body, model, stream):
        self.server.stats.count(path, model)
        self.slow = "slow" in model
        problem = self.sigv4_problem(path, raw_query)
        if problem:
            self.server.stats.reject()
            self.aws_error(*problem)
            return
        for marker, status, kind, message in (("fail-429", 429, "ThrottlingException", "Too many requests, please wait before trying again."),
                                              ("fail-529", 503, "ServiceUnavailableException", "Bedrock is unable to process your request."),
                                              ("fail-500", 500, "InternalServerException", "The server encountered an internal error.")):
            if marker in model:
                self.aws_error(status, kind, message)
                return
        if not isinstance(body.get("messages"), list) or "model" in body:
            self.aws_error(400, "ValidationException", "1 validation error detected: Value at 'messages' failed to satisfy constraint")
            return
        config = body.get("inferenceConfig") or {}
        limit = config.get("maxTokens")
        n = self.count_tokens(limit)
        prompt = sum(len(s.get("text", "").split()) for s in body.get("system") or [])
        for m in body["messages"]:
            prompt += sum(len(c.get("text", "").split()) for c in m.get("content") or [])
        stop = "max_tokens" if limit else "end_turn"
        usage = {"inputTokens": prompt, "outputTokens": n, "totalTokens": prompt + n}
        pieces = [("" if i == 0 else " ") + f"tok{i}" for i in range(n)]
        if not stream:
            answer = {"output": {"message": {"role": "assistant", "content": [{"text": "".join(pieces)}]}}, "stopReason": stop,
                      "usage": usage, "metrics": {"latencyMs": 1}}
            self.cut_whole(answer) if "cut-stream" in model else self.send_json(200, answer)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.amazon.eventstream")
        self.send_header("x-amzn-RequestId", "fake-request-id")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.message(event("messageStart", {"role": "assistant"}))
        for i, piece in enumerate(pieces):
            if i == len(pieces) // 2 and "stream-error" in model:
                self.message(exception("modelStreamErrorException", "Overloaded"))
                self.end_chunks()
                return
            if i == len(pieces) // 2 and "cut-stream" in model:
                self.chunk(event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}})[:20])  # half a message
                self.end_chunks()
                return
            self.message(event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}, "p": "abcdefghij"[: i % 10]}))
        self.message(event("contentBlockStop", {"contentBlockIndex": 0}))
        self.message(event("messageStop", {"stopReason": stop}))
        self.message(event("metadata", {"usage": usage, "metrics": {"latencyMs": 1}}))
        self.end_chunks()

    def message(self, data):
        """One message in two chunks (the prelude split), or whole when slow."""
        if self.slow:
            self.chunk(data)
        else:
            self.chunk(data[:7])
            self.chunk(data[7:])
