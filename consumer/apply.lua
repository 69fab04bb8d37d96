-- Apply group writes, each atomically with its offsets (consumer/state.py
-- describes the contract; this is its reference), and answer 1 or 0 (its
-- compare-and-set failed: nothing of it written) per write.
--
-- Every key of a write is in its group (one hash tag, so one Redis Cluster
-- slot), built here from the group's tag: {tag}:offsets, :seq, :changed, :pop,
-- :trend, :meta, :stats, :hist:{user}, :co:{item}. KEYS declares the first
-- write's offsets key, which routes the call; on a cluster every call carries
-- one write, on a single node many (one round trip, one script call, for a
-- poll's user groups or a flush's row groups).
--
-- ARGV: 1 the writes as a JSON list (below),
--       2 limits "topm slack popmax histlen window ttl feedkeep rowttl"
--
-- A write travels as one JSON document rather than as thousands of arguments
-- (packing arguments one by one in redis-py cost more than the rest of a batch):
--   g: the group's tag
--   o: [[offset field, expected next offset ('' = none), new next offset], ...]
--   h: [[user, [entry, ... oldest first]], ...]     k: {partition: keep-from offset}
--   c: [[item, [neighbour, ...], [integer increment, ...]], ...]   cr, chl: row landmark, half-life
--   p: [item, increment, ...]   t: [item, weight, ...]   tr, thl: trend landmark, half-life
--   s: [stat, increment, ...]   clock: the largest event time of the write
-- Floats travel as strings, so nothing is rounded on the way (Lua's tostring
-- keeps 14 digits).
local topm, slack, popmax, histlen, window, ttl, feedkeep, rowttl =
  string.match(ARGV[2], '(%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+)')
topm, slack, popmax = tonumber(topm), tonumber(slack), tonumber(popmax)
histlen, window, ttl, feedkeep = tonumber(histlen), tonumber(window), tonumber(ttl), tonumber(feedkeep)
rowttl = tonumber(rowttl)

local call, format, tonum, floor, min = redis.call, string.format, tonumber, math.floor, math.min

local function num(x) return format('%.17g', x) end

-- One group's write: d is its document, K its keys (see the top).
local function apply_one(d, tag, K)
  -- 1. compare-and-set on every partition's offset
  for _, o in ipairs(d.o) do
    if (redis.call('HGET', K[1], o[1]) or '') ~= tostring(o[2]) then
      return 0
    end
  end

  -- 2. histories: push, then trim. Beyond histlen a history keeps the entries the
  -- item state has not got yet (at or after keep-from of their partition) and
  -- `window` before them: what a replay after a crash pairs again.
  local keep_from = d.k or {}
  for _, uh in ipairs(d.h or {}) do
    local key = tag .. ':hist:' .. uh[1]
    local entries = uh[2]
    for lo = 1, #entries, 500 do
      redis.call('LPUSH', key, unpack(entries, lo, math.min(lo + 499, #entries)))
    end
    local len = redis.call('LLEN', key)
    if len > histlen then
      local fresh = 0
      local done = false
      for lo = 0, len - 1, 64 do
        for _, raw in ipairs(redis.call('LRANGE', key, lo, lo + 63)) do
          local ok, e = pcall(cjson.decode, raw)
          local from = ok and type(e) == 'table' and e[5] and keep_from[tostring(e[4])]
          if from and e[5] >= from then
            fresh = fresh + 1
          else
            done = true
            break
          end
        end
        if done then break end
      end
      redis.call('LTRIM', key, 0, math.max(histlen, fresh + window) - 1)
    end
    redis.call('EXPIRE', key, ttl)
  end

  -- 3. co-occurrence rows (hashes of integers): rebase, increment, prune.
  -- Decayed counts are fixed point (consumer/logic.py CO_SCALE): a row stored
  -- against an older landmark is multiplied down (rounded, as consumer.state.rebase)
  -- before the write's increments, made against landmark cr, are added.
  local rows = d.c or {}
  local cref, chl = d.cr, d.chl
  local function rebased(v, f) return string.format('%d', math.floor(v * f + 0.5)) end
  -- Counts are integers below 2^53, so Lua's doubles hold them exactly.
  for _, row in ipairs(rows) do
    local key = tag .. ':co:' .. row[1]
    local names, adds = row[2], row[3]
    local scale = 1
    if cref then
      local rref = redis.call('HGET', key, '/ref')
      if not rref then
        redis.call('HSET', key, '/ref', cref)
      else
        rref = tonumber(rref)
        if rref < cref then
          local f = 2 ^ ((rref - cref) / chl)
          local flat = redis.call('HGETALL', key)
          local args = {'/ref', cref}
          for j = 1, #flat, 2 do
            if flat[j] ~= '/ref' then
              args[#args + 1] = flat[j]
              args[#args + 1] = rebased(tonumber(flat[j + 1]), f)
            end
          end
          for lo = 1, #args, 1000 do
            redis.call('HSET', key, unpack(args, lo, math.min(lo + 999, #args)))
          end
        elseif rref > cref then
          scale = 2 ^ ((cref - rref) / chl)
        end
      end
    end
    -- One HMGET and one HSET per row, not one HINCRBY per pair: the call into
    -- Redis, not the hash update, is what a pair costs (benchmarks/ingest_profile.py).
    -- Counts are formatted here: how Redis would write a Lua number depends on
    -- its version (7.2 changed it), and readers parse integers.
    -- The hottest loop of ingest: globals read once (locals below), no `#` per step.
    local args, n = {}, 0
    for lo = 1, #names, 1000 do
      local hi = min(lo + 999, #names)
      local old = call('HMGET', key, unpack(names, lo, hi))
      local base = lo - 1
      for k = lo, hi do
        local inc = adds[k]
        if scale ~= 1 then inc = floor(inc * scale + 0.5) end
        args[n + 1] = names[k]
        args[n + 2] = format('%d', (tonum(old[k - base]) or 0) + inc)
        n = n + 2
      end
    end
    for lo = 1, n, 1000 do
      call('HSET', key, unpack(args, lo, min(lo + 999, n)))
    end
    -- A row nobody's clicks touched for rowttl seconds expires: item keys are
    -- bounded by the items clicked recently, whatever ids writers invent.
    redis.call('EXPIRE', key, rowttl)
    local members = redis.call('HLEN', key)
    if cref then members = members - 1 end
    if members > topm + slack then
      -- Keep the strongest top-M neighbours; the weakest (count, member) go first.
      -- Numbers sort in C; only a tie at the cut needs the member order.
      local flat = redis.call('HGETALL', key)
      local values = {}
      for j = 1, #flat, 2 do
        if flat[j] ~= '/ref' then values[#values + 1] = tonumber(flat[j + 1]) end
      end
      table.sort(values)
      local ndrop = #values - topm
      local cut = values[ndrop]
      local below = 0
      for k = 1, ndrop do
        if values[k] < cut then below = below + 1 end
      end
      local drop, ties = {}, {}
      for j = 1, #flat, 2 do
        if flat[j] ~= '/ref' then
          local v = tonumber(flat[j + 1])
          if v < cut then
            drop[#drop + 1] = flat[j]
          elseif v == cut then
            ties[#ties + 1] = flat[j]
          end
        end
      end
      table.sort(ties)
      for k = 1, ndrop - below do drop[#drop + 1] = ties[k] end
      for lo = 1, #drop, 1000 do
        redis.call('HDEL', key, unpack(drop, lo, math.min(lo + 999, #drop)))
      end
    end
  end

  -- 4. the item group: trending landmark, popularity, trending, stats, meta
  local p, t, s = d.p or {}, d.t or {}, d.s or {}
  local tscale = 1
  if d.tr then
    local ref = redis.call('HGET', K[6], 'trend_ref')
    if ref and tonumber(ref) < d.tr then
      redis.call('ZUNIONSTORE', K[5], 1, K[5], 'WEIGHTS', num(2 ^ ((tonumber(ref) - d.tr) / d.thl)))
      ref = false
    end
    if not ref then
      redis.call('HSET', K[6], 'trend_ref', d.tr, 'half_life_ms', d.thl)
    elseif tonumber(ref) > d.tr then
      tscale = 2 ^ ((d.tr - tonumber(ref)) / d.thl)
    end
  end
  for j = 1, #p, 2 do
    redis.call('ZINCRBY', K[4], p[j + 1], p[j])
  end
  for j = 1, #t, 2 do
    local w = t[j + 1]
    if tscale ~= 1 then w = num(tonumber(w) * tscale) end
    redis.call('ZINCRBY', K[5], w, t[j])
  end
  for j = 1, #s, 2 do
    redis.call('HINCRBY', K[7], s[j], s[j + 1])
  end
  if #p > 0 then
    for _, key in ipairs({K[4], K[5]}) do
      local card = redis.call('ZCARD', key)
      if card > popmax then
        redis.call('ZREMRANGEBYRANK', key, 0, card - popmax - 1)
      end
    end
  end
  if d.clock then
    local clock = tonumber(redis.call('HGET', K[6], 'clock') or '0')
    if d.clock > clock then
      redis.call('HSET', K[6], 'clock', d.clock)
    end
  end

  -- The change feed the API's item caches follow (serving/items.py): every item
  -- whose row (row group) or popularity (item group) this write changed, scored
  -- with the write's sequence number, so a reader asks "what changed since s?"
  -- in one ZRANGEBYSCORE. Each item is held once (its latest change); entries
  -- more than feedkeep writes old are dropped, and a reader that far behind
  -- starts afresh.
  if #rows > 0 or #p > 0 then
    local seq = redis.call('INCR', K[2])
    local changed = {}
    for _, row in ipairs(rows) do
      changed[#changed + 1] = seq
      changed[#changed + 1] = row[1]
    end
    for j = 1, #p, 2 do
      changed[#changed + 1] = seq
      changed[#changed + 1] = p[j]
    end
    for lo = 1, #changed, 1000 do
      redis.call('ZADD', K[3], unpack(changed, lo, math.min(lo + 999, #changed)))
    end
    redis.call('ZREMRANGEBYSCORE', K[3], '-inf', '(' .. (seq - feedkeep))
  end

  -- 5. the offsets
  for _, o in ipairs(d.o) do
    redis.call('HSET', K[1], o[1], o[3])
  end
  return 1
end

local out = {}
for i, d in ipairs(cjson.decode(ARGV[1])) do
  local tag = d.g
  out[i] = apply_one(d, tag, {
    tag .. ':offsets', tag .. ':seq', tag .. ':changed', tag .. ':pop',
    tag .. ':trend', tag .. ':meta', tag .. ':stats',
  })
end
return out
