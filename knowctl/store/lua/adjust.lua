-- Set an earlier reservation's amounts (estimate -> actual) in the windows that still hold
-- it, keeping its recording time, so returned units are free at once.
-- Optional announcement after the windows: KEYS[last] a flag key, ARGV[last - 1] a channel,
-- ARGV[last] a message, published only while the flag exists (someone waits for capacity).
local rid = ARGV[1]
local now = server_now()
local windows = parse_windows(now)
for _, w in ipairs(windows) do
  trim(w)
  local old = redis.call('HGET', w.amt, rid)
  if old then
    local delta = w.amount - tonumber(old)
    if delta ~= 0 then
      redis.call('HSET', w.amt, rid, w.amount)
      redis.call('INCRBY', w.sum, delta) -- INCRBY keeps the key's TTL
    end
  end
end
if #KEYS > 4 * #windows and redis.call('EXISTS', KEYS[#KEYS]) == 1 then
  redis.call('PUBLISH', ARGV[#ARGV - 1], ARGV[#ARGV])
end
return 0
