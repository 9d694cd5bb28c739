-- KEYS: key. ARGV: value. Deletes the key only while it still holds value (a lease we own).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
