-- Apply one partition's batch of state deltas and advance its offset, atomically.
--
-- Compare-and-set: the batch was computed from a snapshot in which the
-- partition's stored offset was ARGV[2] and the trending landmark ARGV[4]. If
-- either moved since (another consumer took the partition, or rescaled trending
-- to another landmark) nothing is written and the caller re-reads and recomputes.
--
-- The delta travels as one JSON document (ARGV[11]) rather than as thousands of
-- arguments: packing arguments one by one in redis-py cost more than the whole
-- rest of the batch. History and co-occurrence keys are built here from the
-- namespace (single-node Redis; see core/keyspace.py).
--
-- KEYS: 1 offsets, 2 meta, 3 stats, 4 pop, 5 trend, 6 change sequence, 7 change feed
-- ARGV: 1 offset field, 2 expected next offset ('' = none), 3 new next offset,
--       4 expected landmark ('' = none), 5 new landmark ('' = leave), 6 rescale factor ('' = none),
--       7 batch max ts ('' = none), 8 half-life ms, 9 namespace,
--       10 limits "topm popmax histlen ttl feedkeep",
--       11 delta JSON {h: [[user, [entry, ...oldest first]]], c: [[item, [nb, inc, ...]]],
--                      p: [item, inc, ...], t: [item, weight, ...], s: [field, inc, ...]}
local stored = redis.call('HGET', KEYS[1], ARGV[1]) or ''
local ref = redis.call('HGET', KEYS[2], 'trend_ref') or ''
if stored ~= ARGV[2] then
  return {0, stored, ref}
end
if ARGV[5] ~= '' then
  if ref == ARGV[4] then
    if ARGV[6] ~= '' then
      redis.call('ZUNIONSTORE', KEYS[5], 1, KEYS[5], 'WEIGHTS', ARGV[6])
    end
    redis.call('HSET', KEYS[2], 'trend_ref', ARGV[5], 'half_life_ms', ARGV[8])
  elseif ref ~= ARGV[5] then
    return {0, stored, ref}
  end
end

local ns = ARGV[9]
local topm, popmax, histlen, ttl, feedkeep =
  string.match(ARGV[10], '(%d+) (%d+) (%d+) (%d+) (%d+)')
topm, popmax, histlen, ttl = tonumber(topm), tonumber(popmax), tonumber(histlen), tonumber(ttl)
feedkeep = tonumber(feedkeep)
local d = cjson.decode(ARGV[11])

for _, uh in ipairs(d.h) do
  local key = ns .. ':hist:' .. uh[1]
  local entries = uh[2]
  -- LPUSH takes arguments oldest first and leaves the newest at the head.
  for lo = 1, #entries, 500 do
    redis.call('LPUSH', key, unpack(entries, lo, math.min(lo + 499, #entries)))
  end
  redis.call('LTRIM', key, 0, histlen - 1)
  redis.call('EXPIRE', key, ttl)
end

for _, row in ipairs(d.c) do
  local key = ns .. ':co:' .. row[1]
  local pairs_ = row[2]
  for j = 1, #pairs_, 2 do
    redis.call('ZINCRBY', key, pairs_[j + 1], pairs_[j])
  end
  -- Keep the strongest top-M neighbours; the weakest go first.
  local card = redis.call('ZCARD', key)
  if card > topm then
    redis.call('ZREMRANGEBYRANK', key, 0, card - topm - 1)
  end
end

local p, t, s = d.p, d.t, d.s
for j = 1, #p, 2 do
  redis.call('ZINCRBY', KEYS[4], p[j + 1], p[j])
end
for j = 1, #t, 2 do
  redis.call('ZINCRBY', KEYS[5], t[j + 1], t[j])
end
for j = 1, #s, 2 do
  redis.call('HINCRBY', KEYS[3], s[j], s[j + 1])
end
if #p > 0 then
  for _, key in ipairs({KEYS[4], KEYS[5]}) do
    local card = redis.call('ZCARD', key)
    if card > popmax then
      redis.call('ZREMRANGEBYRANK', key, 0, card - popmax - 1)
    end
  end
end

-- The change feed the API's item caches follow (serving/items.py): every item
-- whose co row or popularity this write changed, scored with the write's
-- sequence number, so a reader asks "what changed since sequence s?" in one
-- ZRANGEBYSCORE. Each item is held once (its latest change); entries more than
-- feedkeep writes old are dropped, and a reader that far behind starts afresh.
if #d.c > 0 or #p > 0 then
  local seq = redis.call('INCR', KEYS[6])
  local changed = {}
  for _, row in ipairs(d.c) do
    changed[#changed + 1] = seq
    changed[#changed + 1] = row[1]
  end
  for j = 1, #p, 2 do
    changed[#changed + 1] = seq
    changed[#changed + 1] = p[j]
  end
  for lo = 1, #changed, 1000 do
    redis.call('ZADD', KEYS[7], unpack(changed, lo, math.min(lo + 999, #changed)))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', '(' .. (seq - feedkeep))
end

if ARGV[7] ~= '' then
  local clock = tonumber(redis.call('HGET', KEYS[2], 'clock') or '0')
  if tonumber(ARGV[7]) > clock then
    redis.call('HSET', KEYS[2], 'clock', ARGV[7])
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return {1, ARGV[3], redis.call('HGET', KEYS[2], 'trend_ref') or ''}
