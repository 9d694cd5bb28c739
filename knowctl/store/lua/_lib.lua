-- Window arithmetic shared by acquire.lua, adjust.lua and usage.lua: the loader prepends
-- this file to each of them. It transliterates knowctl/policy/windows.py; keep the two in step.
--
-- Times are integer microseconds of Redis server time (TIME), never a client's clock.
-- Epoch microseconds (~1.7e15) are exact in Lua doubles and in ZSET scores. Numbers are
-- passed to redis.call as numbers (Redis formats them with %.17g); string concatenation
-- would format with %.14g and silently drop digits.
--
-- KEYS, four per window (knowctl.store.keys.WindowKeys): log ZSET (reservation id ->
-- recording time), amounts HASH (reservation id -> amount), total STRING (running sum),
-- claims HASH (daemon id -> "units:time_us", see acquire.lua).
-- ARGV[1] reservation id (unused by usage.lua), ARGV[2] number of windows, then per window:
--   length_us, cap, amount, nb, b_1 .. b_nb
-- nb = 0 for a rolling window; a calendar window sends the local midnights around the
-- client's day (ascending) and the script picks the period around the server's clock.
-- parse_windows returns the windows and the position of the ARGV that follows them; acquire.lua
-- reads several scopes' windows, each count at ``at`` and keys after ``key_base``.

-- Keys outlive their newest entry by this much, then vanish: idle scopes leave nothing.
local MARGIN_MS = 5000
-- Entries handled per ZRANGE/HMGET round inside the script (keeps unpack() small).
local BATCH = 512

local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- w.floor: lowest score that still counts at now; w.finish: end of a calendar period.
local function bounds(w, now, days)
  if #days == 0 then
    w.floor = now - w.length + 1 -- counts iff score > now - length (scores are integers)
    return
  end
  for _, b in ipairs(days) do
    if b <= now then
      w.floor = b
    elseif w.finish == nil then
      w.finish = b
    end
  end
  -- Only if the client's clock is more than a day off: behave as a rolling window.
  if w.floor == nil then w.floor = now - w.length + 1 end
  if w.finish == nil then w.finish = w.floor + w.length end
end

local function parse_windows(now, at, key_base)
  at = at or 2
  key_base = key_base or 0
  local ws = {}
  local pos = at + 1
  for i = 1, tonumber(ARGV[at]) do
    local k = key_base + 4 * i
    local w = {
      log = KEYS[k - 3], amt = KEYS[k - 2], sum = KEYS[k - 1], clm = KEYS[k],
      length = tonumber(ARGV[pos]), cap = tonumber(ARGV[pos + 1]), amount = tonumber(ARGV[pos + 2]),
    }
    local nb = tonumber(ARGV[pos + 3])
    pos = pos + 4
    local days = {}
    for j = 1, nb do days[j] = tonumber(ARGV[pos + j - 1]) end
    pos = pos + nb
    w.calendar = nb > 0
    bounds(w, now, days)
    ws[i] = w
  end
  return ws, pos
end

-- Drop the entries that no longer count, keep the running total in step, return it.
local function trim(w)
  local newest = redis.call('ZRANGE', w.log, -1, -1, 'WITHSCORES')
  w.newest = nil
  if #newest == 0 then return 0 end
  if tonumber(newest[2]) < w.floor then
    -- Everything has left: drop the whole log at once (UNLINK frees it off the main thread).
    redis.call('UNLINK', w.log, w.amt, w.sum)
    return 0
  end
  w.newest = tonumber(newest[2])
  local total = tonumber(redis.call('GET', w.sum) or -1)
  local recount = total < 0
  if recount then
    -- The total is only a cache of the log; rebuild it if it went missing (e.g. evicted).
    total = 0
    for _, v in ipairs(redis.call('HVALS', w.amt)) do total = total + tonumber(v) end
  end
  local freed = 0
  while true do
    local old = redis.call('ZRANGEBYSCORE', w.log, '-inf', w.floor - 1, 'LIMIT', 0, BATCH)
    if #old == 0 then break end
    local amounts = redis.call('HMGET', w.amt, unpack(old))
    for j = 1, #amounts do freed = freed + (tonumber(amounts[j]) or 0) end
    redis.call('HDEL', w.amt, unpack(old))
    redis.call('ZREM', w.log, unpack(old))
  end
  total = total - freed
  if recount then
    local pttl = redis.call('PTTL', w.log)
    if pttl > 0 then
      redis.call('SET', w.sum, total, 'PX', pttl)
    else
      redis.call('SET', w.sum, total)
    end
  elseif freed ~= 0 then
    redis.call('DECRBY', w.sum, freed) -- DECRBY keeps the key's TTL
  end
  return total
end

local function record(w, rid, now)
  -- A server clock stepped backwards must not let an entry leave early: record it no
  -- earlier than the newest one (it then stays longer, which can only under-admit).
  local at = now
  if w.newest ~= nil and w.newest > at then at = w.newest end
  redis.call('ZADD', w.log, at, rid)
  redis.call('HSET', w.amt, rid, w.amount)
  redis.call('INCRBY', w.sum, w.amount)
  local keep_us = w.length
  if w.calendar then keep_us = w.finish - now end
  local ms = math.ceil(keep_us / 1000) + MARGIN_MS
  redis.call('PEXPIRE', w.log, ms)
  redis.call('PEXPIRE', w.amt, ms)
  redis.call('PEXPIRE', w.sum, ms)
end

-- Microseconds until usage next drops (0 for an empty rolling window).
local function reset_after(w, now)
  if w.calendar then return w.finish - now end
  local oldest = redis.call('ZRANGE', w.log, 0, 0, 'WITHSCORES')
  if #oldest == 0 then return 0 end
  return tonumber(oldest[2]) + w.length - now
end

-- Microseconds until at least `need` units have left the window (after trim).
local function wait_for(w, need, now)
  if w.calendar then return w.finish - now end
  local freed = 0
  local offset = 0
  while true do
    local batch = redis.call('ZRANGE', w.log, offset, offset + BATCH - 1, 'WITHSCORES')
    if #batch == 0 then break end
    local ids = {}
    for j = 1, #batch, 2 do ids[#ids + 1] = batch[j] end
    local amounts = redis.call('HMGET', w.amt, unpack(ids))
    for j = 1, #ids do
      freed = freed + (tonumber(amounts[j]) or 0)
      if freed >= need then return tonumber(batch[2 * j]) + w.length - now end
    end
    offset = offset + BATCH
  end
  return w.length -- only if need > total, which acquire never asks for
end
