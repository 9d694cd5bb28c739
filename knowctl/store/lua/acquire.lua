-- Admit a reservation iff every window with a positive amount stays within its cap, and
-- only then record it in every window: one atomic step across all of a scope's windows.
--
-- Claims (optional; ARGV after the windows: claimant, divisor, claim_ttl_us, then one limit
-- per window): each daemon holds a claim on part of what a window has left, the units it
-- may admit on its own if the store stops answering. Others' unexpired claims count as used
-- against the window's limit (a priority's smaller cap is checked on usage alone), and the
-- claimant's claim is set anew on every call to
-- floor((limit - used - others' claims) / (max(divisor, daemons claiming) + 1)), so usage
-- plus every claim never exceeds the limit: what the daemons admit during an outage from
-- their claims fits in the window (docs/architecture.md, "A store outage"). The one part
-- that always stays unclaimed keeps room for a daemon that has no claim yet (a new pod
-- while the one it replaces still holds its claim, until that expires).
--
-- Returns {admitted (1/0), retry_after_us (-1: never fits), then per window:
--          usage, reset_after_us, blocked (1/0), then per window the claim held (if any)}.
local rid = ARGV[1]
local now = server_now()
local ws, pos = parse_windows(now)
local claimant = ARGV[pos]
local divisor, ttl = 1, 0
if claimant then
  divisor = tonumber(ARGV[pos + 1])
  ttl = tonumber(ARGV[pos + 2])
  for i, w in ipairs(ws) do w.limit = tonumber(ARGV[pos + 2 + i]) end
end
local replay = false
for _, w in ipairs(ws) do
  w.used = trim(w)
  w.others = 0
  w.claimants = 1
  if claimant then
    local held = redis.call('HGETALL', w.clm)
    for j = 1, #held, 2 do
      local who = held[j]
      local units, at = string.match(held[j + 1], '^(%d+):(%d+)$')
      if who ~= claimant then
        if units and tonumber(at) + ttl > now then
          w.others = w.others + tonumber(units)
          w.claimants = w.claimants + 1
        else
          redis.call('HDEL', w.clm, who)
        end
      end
    end
  end
  -- An id already recorded is a replay of the same request (say, a retry after a lost
  -- reply): report it admitted, record nothing twice.
  if redis.call('ZSCORE', w.log, rid) then replay = true end
end

local admitted = 1
local retry = 0
if not replay then
  for _, w in ipairs(ws) do
    -- The cap is the priority's share; others' claims are held against the whole limit.
    if w.amount > 0 and (w.used + w.amount > w.cap or (claimant and w.used + w.amount + w.others > w.limit)) then
      w.blocked = true
      admitted = 0
    end
  end
  if admitted == 1 then
    for _, w in ipairs(ws) do
      record(w, rid, now)
      w.used = w.used + w.amount
    end
  else
    for _, w in ipairs(ws) do
      if w.blocked then
        if w.amount > w.cap then
          retry = -1
          break
        end
        local need = w.used + w.amount - w.cap
        if claimant then need = math.max(need, w.used + w.amount + w.others - w.limit) end
        local wait = wait_for(w, need, now)
        if wait > retry then retry = wait end
      end
    end
  end
end

local out = {admitted, retry}
for _, w in ipairs(ws) do
  out[#out + 1] = w.used
  out[#out + 1] = reset_after(w, now)
  out[#out + 1] = w.blocked and 1 or 0
end
if claimant then
  for _, w in ipairs(ws) do
    local free = w.limit - w.used - w.others
    local parts = math.max(divisor, w.claimants) + 1
    local claim = 0
    if free > 0 then claim = math.floor(free / parts) end
    if claim > 0 then
      redis.call('HSET', w.clm, claimant, string.format('%d:%d', claim, now))
      redis.call('PEXPIRE', w.clm, math.ceil(ttl / 1000) + MARGIN_MS)
    else
      redis.call('HDEL', w.clm, claimant)
    end
    out[#out + 1] = claim
  end
end
return out
