-- KEYS: entry, lease, watch. ARGV: token, lease ms, stale ms (-1: never fresh).
-- Returns {entry or nil, fresh (1/0), leased (1/0)}.
local value = redis.call('GET', KEYS[1])
local stale = tonumber(ARGV[3])
if value and stale >= 0 then
  local left = redis.call('PTTL', KEYS[1])
  if left == -1 or left > stale then
    return {value, 1, 0}
  end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {value, 0, 1}
end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])
return {value, 0, 0}
