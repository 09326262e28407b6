-- toolgate: one plugin state operation on one space (plugin and grant), atomically.
--
-- KEYS[1]: the space's values (a hash: entry key -> value).
-- KEYS[2]: the last millisecond each entry is live (a sorted set: score = that ms, member =
--   the entry key).
-- KEYS[3]: the bytes of keys and values of the entries in KEYS[1] (a string), kept with every
--   write so a set need not read every value.
-- ARGV[1]: "redis" to read Redis's own clock, else the gateway's time in ms.
-- ARGV[2]: the operation, "get", "set" or "del"; ARGV[3]: the entry key.
-- For "set": ARGV[4] the value, ARGV[5] the time to live in ms, ARGV[6] max_entries,
--   ARGV[7] max_bytes.
--
-- Returns, for "get": {} (absent or expired) or {value}; for "del": {}; for "set": {"ok"}, or
-- {"entries"} or {"bytes", total} when the entry would break that bound, and nothing was
-- stored. Expired entries are removed by a "set" in their space and a "get" of them.
local values, expiries, total = KEYS[1], KEYS[2], KEYS[3]
local now
if ARGV[1] == 'redis' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[1])
end
local op, key = ARGV[2], ARGV[3]

-- Removes `k` (and its bytes), if it has a value.
local function remove(k)
  local old = redis.call('HGET', values, k)
  redis.call('ZREM', expiries, k)
  if old then
    redis.call('HDEL', values, k)
    redis.call('DECRBY', total, #k + #old)
  end
end

-- An empty space leaves no keys behind.
local function tidy()
  if redis.call('HLEN', values) == 0 then
    redis.call('DEL', values, expiries, total)
  end
end

if op == 'get' then
  local expires = redis.call('ZSCORE', expiries, key)
  if not expires then
    return {}
  end
  if tonumber(expires) < now then
    remove(key)
    tidy()
    return {}
  end
  local value = redis.call('HGET', values, key)
  if not value then
    return {}
  end
  return {value}
end

if op == 'del' then
  remove(key)
  tidy()
  return {}
end

-- "set": drop the expired entries, then check the space as it would be after the write.
local expired = redis.call('ZRANGEBYSCORE', expiries, '-inf', '(' .. now)
for _, k in ipairs(expired) do
  remove(k)
end
tidy()
local value, ttl = ARGV[4], tonumber(ARGV[5])
local max_entries, max_bytes = tonumber(ARGV[6]), tonumber(ARGV[7])
local entries = redis.call('HLEN', values)
local bytes = 0
if entries > 0 then
  bytes = tonumber(redis.call('GET', total) or '0')
end
local old = redis.call('HGET', values, key)
if old then
  entries = entries - 1
  bytes = bytes - #key - #old
end
if entries + 1 > max_entries then
  return {'entries'}
end
bytes = bytes + #key + #value
if bytes > max_bytes then
  return {'bytes', tostring(bytes)}
end
redis.call('HSET', values, key, value)
redis.call('ZADD', expiries, now + ttl, key)
redis.call('SET', total, bytes)
-- The keys outlive the space's last entry. Redis expires them on its own clock, which the
-- entries may not use (clock = "gateway"): a minute's margin keeps them until the last entry
-- has surely expired on the gateway's clock too.
local last = redis.call('ZRANGE', expiries, -1, -1, 'WITHSCORES')
local keep = math.floor(tonumber(last[2]) - now) + 60000
redis.call('PEXPIRE', values, keep)
redis.call('PEXPIRE', expiries, keep)
redis.call('PEXPIRE', total, keep)
return {'ok'}
