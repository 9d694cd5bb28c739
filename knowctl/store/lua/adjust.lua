-- Set an earlier reservation's amounts (estimate -> actual) in the windows that still hold
-- it, keeping its recording time, so returned units are free at once.
local rid = ARGV[1]
local now = server_now()
for _, w in ipairs(parse_windows(now)) do
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
return 0
