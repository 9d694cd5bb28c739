-- wrk script: POST a generateContent body and print the run's figures as one JSON line
-- (prefixed "RESULT ") for bench/run.py to read.
-- BENCH_SAME_PROMPT=1: the same prompt every time (cache hits); else a distinct prompt on
-- every request (misses).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local same = os.getenv("BENCH_SAME_PROMPT") == "1"
local threads = {}
local counter = 0
local thread_id = 0
local fixed = nil

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  if same then
    fixed = wrk.format(nil, nil, nil,
      '{"contents":[{"role":"user","parts":[{"text":"benchmark prompt that is always the same"}]}]}')
  end
end

function request()
  if fixed then
    return fixed
  end
  counter = counter + 1
  local body = '{"contents":[{"role":"user","parts":[{"text":"benchmark prompt ' .. thread_id .. '-' .. counter ..
    '-' .. os.time() .. ' about the tides and the moon"}]}]}'
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
