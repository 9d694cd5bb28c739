-- Read each window's state for stats; trims what has left, records nothing.
-- Returns per window: usage, entries, reset_after_us.
local now = server_now()
local out = {}
for _, w in ipairs(parse_windows(now)) do
  out[#out + 1] = trim(w)
  out[#out + 1] = redis.call('ZCARD', w.log)
  out[#out + 1] = reset_after(w, now)
end
return out
