-- wrk script for bench/run.py, configured from the environment:
--   BENCH_METHOD  GET or POST (default GET)
--   BENCH_PATHS   one or more paths separated by "|", requested round-robin
--   BENCH_BODY    request body (optional)
--   BENCH_CTYPE   Content-Type of the body (optional)
--   BENCH_AUTH    Authorization header value (optional)
-- done() prints one line "BENCH_JSON {...}" with throughput, latency (us) and errors.

local method = os.getenv("BENCH_METHOD") or "GET"
local body = os.getenv("BENCH_BODY")
if body == "" then body = nil end
local headers = {}
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then headers["Authorization"] = auth end
local ctype = os.getenv("BENCH_CTYPE")
if ctype and ctype ~= "" then headers["Content-Type"] = ctype end

local requests = {}
for path in string.gmatch(os.getenv("BENCH_PATHS") or "/", "[^|]+") do
  requests[#requests + 1] = wrk.format(method, path, headers, body)
end
local count, n = #requests, 0

request = function()
  n = n + 1
  return requests[(n % count) + 1]
end

done = function(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
