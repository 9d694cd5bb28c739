-- Admit a reservation in one of several candidate scopes (the deployments that serve a model;
-- usually just one scope), iff every window with a positive amount stays within its cap, and
-- only then record it in every window of the chosen scope: one atomic step.
--
-- The choice (as knowctl/store/memory/store.py makes it; keep the two in step): the first admissible
-- candidate in the order given (the caller sorts them by preference, then by the headroom it
-- last saw). Candidates after the chosen one are not looked at: a pool's call costs the
-- server about what one deployment's does.
--
-- Claims (optional): each daemon holds a claim on part of what a window has left, the units it
-- may admit on its own if the store stops answering. Others' unexpired claims count as used
-- against the window's limit (a priority's smaller cap is checked on usage alone), and the
-- claimant's claim is set anew on every call, in every candidate's windows, to
-- floor((limit - used - others' claims) / (max(divisor, daemons claiming) + 1)), so usage
-- plus every claim never exceeds the limit: what the daemons admit during an outage from
-- their claims fits in the window (docs/architecture.md, "A store outage"). The one part
-- that always stays unclaimed keeps room for a daemon that has no claim yet (a new pod
-- while the one it replaces still holds its claim, until that expires). A claimant whose call
-- is refused holds no claim until its next admission.
--
-- ARGV: reservation id, number of candidates, claimant ('' for none), divisor, claim_ttl_us,
-- fresh (1: the id is sent for the first time), then per candidate: its windows (see
-- _lib.lua), and with a claimant one limit per window. KEYS: every candidate's window keys,
-- in order.
-- Returns {admitted (1/0), retry_after_us (-1: never fits), chosen candidate (1-based, 0 for
-- none), candidates reported (a prefix of them), then per reported candidate and window:
-- usage, reset_after_us, blocked (1/0), then with a claimant per reported candidate and
-- window the claim held}.
local rid = ARGV[1]
local count = tonumber(ARGV[2])
local claimant = ARGV[3]
if claimant == '' then claimant = nil end
local divisor = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local fresh = tonumber(ARGV[6])
local now = server_now()

-- Candidates are read from ARGV as they are reached: a call admitted by the first of three
-- does not pay for reading the other two.
local cands = {}
local pos, key_base = 7, 0
local function parse(c)
  local ws, after = parse_windows(now, pos, key_base)
  pos = after
  if claimant then
    for i, w in ipairs(ws) do w.limit = tonumber(ARGV[pos + i - 1]) end
    pos = pos + #ws
  end
  key_base = key_base + 4 * #ws
  cands[c] = {ws = ws}
  return cands[c]
end

-- A replay is admitted where it was recorded, wherever that is in the order. A fresh id (the
-- caller's first send of it) cannot be one: nothing to look for.
local replayed = 0
if fresh == 0 then
  for c = 1, count do
    for _, w in ipairs(parse(c).ws) do
      -- An id already recorded is a replay of the same request (say, a retry after a lost
      -- reply): report it admitted, record nothing twice.
      if replayed == 0 and redis.call('ZSCORE', w.log, rid) then replayed = c end
    end
  end
end

-- Trim a candidate's windows and count the others' claims in them.
local function look(cand)
  cand.looked = true
  for _, w in ipairs(cand.ws) do
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
  end
end

local chosen = replayed
if chosen > 0 then
  look(cands[chosen])
else
  for c = 1, count do
    local cand = cands[c] or parse(c)
    look(cand)
    for _, w in ipairs(cand.ws) do
      -- The cap is the priority's share; others' claims are held against the whole limit.
      if w.amount > 0 and (w.used + w.amount > w.cap or (claimant and w.used + w.amount + w.others > w.limit)) then
        w.blocked = true
        cand.blocked = true
      end
    end
    if not cand.blocked then
      chosen = c
      break
    end
  end
  if chosen > 0 then
    for _, w in ipairs(cands[chosen].ws) do
      record(w, rid, now)
      w.used = w.used + w.amount
      w.blocked = false
    end
  end
end

-- Refused everywhere: how long until the soonest candidate fits (-1 if none ever can).
local retry = 0
if chosen == 0 then
  retry = -1
  for _, cand in ipairs(cands) do
    local wait = 0
    for _, w in ipairs(cand.ws) do
      if w.blocked then
        if w.amount > w.cap then
          wait = -1
          break
        end
        local need = w.used + w.amount - w.cap
        if claimant then need = math.max(need, w.used + w.amount + w.others - w.limit) end
        wait = math.max(wait, wait_for(w, need, now))
      end
    end
    if wait >= 0 and (retry < 0 or wait < retry) then retry = wait end
  end
end

-- The candidates read (a prefix: up to the chosen one, or all) are reported; one read but not
-- looked at (a replay's others) reports usage -1 (unknown). Claims stay as they were in
-- every candidate not looked at.
local out = {chosen > 0 and 1 or 0, retry, chosen, #cands}
for _, cand in ipairs(cands) do
  for _, w in ipairs(cand.ws) do
    if cand.looked then
      out[#out + 1] = w.used
      out[#out + 1] = reset_after(w, now)
    else
      out[#out + 1] = -1
      out[#out + 1] = 0
    end
    out[#out + 1] = w.blocked and 1 or 0
  end
end
if claimant then
  for _, cand in ipairs(cands) do
    for _, w in ipairs(cand.ws) do
      if not cand.looked then
        out[#out + 1] = -1
      else
      local free = w.limit - w.used - w.others
      local parts = math.max(divisor, w.claimants) + 1
      local claim = 0
      -- A claimant refused everywhere holds nothing: its stale claim must not keep the last
      -- units of a window from another daemon's call (the daemons' claims would otherwise
      -- keep each other's calls out until they expire).
      if free > 0 and chosen > 0 then claim = math.floor(free / parts) end
      if claim > 0 then
        redis.call('HSET', w.clm, claimant, string.format('%d:%d', claim, now))
        redis.call('PEXPIRE', w.clm, math.ceil(ttl / 1000) + MARGIN_MS)
      else
        redis.call('HDEL', w.clm, claimant)
      end
      out[#out + 1] = claim
      end
    end
  end
end
return out
