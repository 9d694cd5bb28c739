-- KEYS: lease, watch[, entry]. ARGV: token, channel, message[, value, ttl ms].
-- Returns 1 if the lease was still ours (and is now released), else 0.
if KEYS[3] then
  redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
end
local mine = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  mine = 1
end
if redis.call('DEL', KEYS[2]) == 1 then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return mine
