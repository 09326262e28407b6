-- toolgate: one call's check-and-consume over every counter it needs, atomically.
--
-- KEYS: for each distinct counter j = 1..m, KEYS[2j-1] is its units (a sorted set: score = the
--   ms the unit was taken, member = the unit's id) and KEYS[2j] the longest window it has been
--   given (ms), which decides how long its units are kept.
-- ARGV[1]: "redis" to read Redis's own clock (one clock for every replica), else the gateway's
--   time in ms.
-- ARGV[2]: n, the number of (counter, window) requests; then n triples: counter index j,
--   window length in ms, max; then m unit ids, one per distinct counter.
--
-- Returns {1, now} when every window had room and one unit was added to each counter, or
-- {0, i, retry_ms}: request i (0-based) is full the longest, and nothing was added.
local now
if ARGV[1] == 'redis' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[1])
end
local n = tonumber(ARGV[2])
local m = #KEYS / 2
-- Time never runs backwards for a counter: a call stamped earlier than a unit already taken
-- (a gateway clock read before another replica's, or a clock stepped back) counts as taken at
-- that unit's time. Otherwise trimming by the later time could drop units the earlier call
-- still needs to see, and admit more than max in a window.
for j = 1, m do
  local last = redis.call('ZRANGE', KEYS[2 * j - 1], -1, -1, 'WITHSCORES')
  if last[2] ~= nil and tonumber(last[2]) > now then
    now = tonumber(last[2])
  end
end
local worst, worst_retry = -1, -1
local longest = {}
for i = 0, n - 1 do
  local j = tonumber(ARGV[3 + 3 * i])
  local len = tonumber(ARGV[4 + 3 * i])
  local max = tonumber(ARGV[5 + 3 * i])
  if (longest[j] or 0) < len then longest[j] = len end
  local units = KEYS[2 * j - 1]
  local retry = nil
  if max == 0 then
    retry = len
  else
    -- Units inside the window: taken after now - len.
    local inside = redis.call('ZCOUNT', units, '(' .. (now - len), '+inf')
    if inside >= max then
      -- Full: the oldest of the newest `max` units must leave first.
      local r = redis.call('ZREVRANGE', units, max - 1, max - 1, 'WITHSCORES')
      retry = tonumber(r[2]) + len - now
    end
  end
  if retry ~= nil then
    if retry < 1 then retry = 1 end
    if retry > worst_retry then
      worst, worst_retry = i, retry
    end
  end
end
if worst >= 0 then
  return {0, worst, worst_retry}
end
local ids = 3 + 3 * n
for j = 1, m do
  local units, meta = KEYS[2 * j - 1], KEYS[2 * j]
  local keep = math.max(longest[j] or 1, tonumber(redis.call('GET', meta) or '0'))
  -- Keys expire on Redis's own clock, which the windows may not use (clock = "gateway"): a
  -- minute's margin keeps a key until its window has surely passed on the gateway's clock too.
  local ttl = keep + 60000
  redis.call('SET', meta, keep, 'PX', ttl)
  redis.call('ZREMRANGEBYSCORE', units, '-inf', now - keep)
  redis.call('ZADD', units, now, ARGV[ids + j - 1])
  redis.call('PEXPIRE', units, ttl)
end
return {1, now}
