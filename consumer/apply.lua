-- Apply one partition's batch of state deltas and advance its offset, atomically.
--
-- Compare-and-set: the batch was computed from a snapshot in which the
-- partition's stored offset was ARGV[2] and the trending landmark ARGV[4]. If
-- either moved since (another consumer took the partition, or rescaled trending
-- to another landmark) nothing is written and the caller re-reads and recomputes.
--
-- KEYS: 1 offsets, 2 meta, 3 stats, 4 pop, 5 trend, then nh history keys, then nco co-row keys
-- ARGV: 1 offset field, 2 expected next offset ('' = none), 3 new next offset,
--       4 expected landmark ('' = none), 5 new landmark, 6 rescale factor ('' = none),
--       7 batch max ts ('' = none), 8 half-life ms, 9 co top-M, 10 pop max,
--       11 history ttl s, 12 events, 13 nh, 14 nco, 15 npop, 16 ntrend, 17 nstat,
--       then per history key: count, entries (newest first);
--       per co row: count, (neighbour, increment) pairs;
--       npop (item, increment) pairs; ntrend (item, increment) pairs;
--       nstat (stats field, increment) pairs.
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

local nh, nco = tonumber(ARGV[13]), tonumber(ARGV[14])
local npop, ntrend, nstat = tonumber(ARGV[15]), tonumber(ARGV[16]), tonumber(ARGV[17])
local ttl, topm, popmax = tonumber(ARGV[11]), tonumber(ARGV[9]), tonumber(ARGV[10])
local a = 18

for h = 1, nh do
  local key = KEYS[5 + h]
  local n = tonumber(ARGV[a]); a = a + 1
  redis.call('DEL', key)
  if n > 0 then
    redis.call('RPUSH', key, unpack(ARGV, a, a + n - 1))
    redis.call('EXPIRE', key, ttl)
  end
  a = a + n
end

for c = 1, nco do
  local key = KEYS[5 + nh + c]
  local n = tonumber(ARGV[a]); a = a + 1
  for _ = 1, n do
    redis.call('ZINCRBY', key, ARGV[a + 1], ARGV[a])
    a = a + 2
  end
  -- Keep the strongest top-M neighbours; the weakest go first.
  local card = redis.call('ZCARD', key)
  if card > topm then
    redis.call('ZREMRANGEBYRANK', key, 0, card - topm - 1)
  end
end

for _ = 1, npop do
  redis.call('ZINCRBY', KEYS[4], ARGV[a + 1], ARGV[a]); a = a + 2
end
for _ = 1, ntrend do
  redis.call('ZINCRBY', KEYS[5], ARGV[a + 1], ARGV[a]); a = a + 2
end
for _ = 1, nstat do
  redis.call('HINCRBY', KEYS[3], ARGV[a], ARGV[a + 1]); a = a + 2
end
if npop > 0 then
  for _, key in ipairs({KEYS[4], KEYS[5]}) do
    local card = redis.call('ZCARD', key)
    if card > popmax then
      redis.call('ZREMRANGEBYRANK', key, 0, card - popmax - 1)
    end
  end
end

if ARGV[7] ~= '' then
  local clock = tonumber(redis.call('HGET', KEYS[2], 'clock') or '0')
  if tonumber(ARGV[7]) > clock then
    redis.call('HSET', KEYS[2], 'clock', ARGV[7])
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return {1, ARGV[3], redis.call('HGET', KEYS[2], 'trend_ref') or ''}
