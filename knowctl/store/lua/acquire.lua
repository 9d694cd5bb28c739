-- Admit a reservation iff every window with a positive amount stays within its cap, and
-- only then record it in every window: one atomic step across all of a scope's windows.
-- Returns {admitted (1/0), retry_after_us (-1: never fits), then per window:
--          usage, reset_after_us, blocked (1/0)}.
local rid = ARGV[1]
local now = server_now()
local ws = parse_windows(now)
local replay = false
for _, w in ipairs(ws) do
  w.used = trim(w)
  -- An id already recorded is a replay of the same request (say, a retry after a lost
  -- reply): report it admitted, record nothing twice.
  if redis.call('ZSCORE', w.log, rid) then replay = true end
end

local admitted = 1
local retry = 0
if not replay then
  for _, w in ipairs(ws) do
    if w.amount > 0 and w.used + w.amount > w.cap then
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
        local wait = wait_for(w, w.used + w.amount - w.cap, now)
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
return out
