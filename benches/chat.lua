-- wrk script: POST a small non-streamed OpenAI chat request and print a machine-readable summary.
-- Env: BENCH_MODEL (model name), BENCH_MAX_TOKENS (default 8). Used by benches/run.sh.
local model = os.getenv("BENCH_MODEL") or "bench-static"
local max_tokens = tonumber(os.getenv("BENCH_MAX_TOKENS") or "8")

wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"
wrk.body = string.format(
  '{"model":"%s","messages":[{"role":"system","content":"You are a benchmark."},' ..
  '{"role":"user","content":"Say hello in five words."}],"max_tokens":%d,"temperature":0,"stream":false}',
  model, max_tokens)

-- No response() callback on purpose: it makes wrk parse every header into a Lua table.
-- errors.status counts answers outside 2xx/3xx.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
    '"lat_mean_us":%.2f,"lat_stdev_us":%.2f,"lat_min_us":%d,"lat_max_us":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.min, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
