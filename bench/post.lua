-- wrk script: POST one call family's body and print the run's figures as one JSON line
-- (prefixed "RESULT ") for bench/run.py to read.
-- BENCH_SHAPE: generate (default; generateContent), interaction (Interactions API create),
-- openai (OpenAI-compatible chat completion), embed90 (batchEmbedContents of 100 texts, the
-- same 90 every time and 10 new ones).
-- BENCH_SAME_PROMPT=1: the same prompt every time (cache hits; an interaction with
-- store:false, the only kind that may be cached); else a distinct prompt on every request.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local same = os.getenv("BENCH_SAME_PROMPT") == "1"
local shape = os.getenv("BENCH_SHAPE") or "generate"
if shape == "" then shape = "generate" end
local threads = {}
local counter = 0
local thread_id = 0
local fixed = nil
local known = nil

local function body_of(text)
  if shape == "interaction" then
    local store = same and ',"store":false' or ''
    return '{"model":"gemini-2.5-flash","input":"' .. text .. '"' .. store .. '}'
  elseif shape == "openai" then
    return '{"model":"gemini-2.5-flash","messages":[{"role":"user","content":"' .. text .. '"}]}'
  elseif shape == "embed90" then
    local items = {}
    for i = 1, 10 do
      items[i] = '{"model":"models/gemini-embedding-001","content":{"parts":[{"text":"' .. text .. ' #' .. i .. '"}]}}'
    end
    return '{"requests":[' .. known .. ',' .. table.concat(items, ',') .. ']}'
  end
  return '{"contents":[{"role":"user","parts":[{"text":"' .. text .. '"}]}]}'
end

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  if shape == "embed90" then
    local items = {}
    for i = 1, 90 do
      items[i] = '{"model":"models/gemini-embedding-001","content":{"parts":[{"text":"a passage every batch holds, number ' .. i .. '"}]}}'
    end
    known = table.concat(items, ',')
  end
  if same then
    fixed = wrk.format(nil, nil, nil, body_of("benchmark prompt that is always the same"))
  end
end

function request()
  if fixed then
    return fixed
  end
  counter = counter + 1
  local text = 'benchmark prompt ' .. thread_id .. '-' .. counter .. '-' .. os.time() .. ' about the tides and the moon'
  return wrk.format(nil, nil, nil, body_of(text))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
