-- Shared by fetch.lua and rows.lua (serving/store.py puts it in front of both).
--
-- The all-time popularity of the distinct items in `items` and in `rows` (each
-- flat [member, score, ...] as ZREVRANGE WITHSCORES gives it), as flat
-- [item, count, ...] for those the popularity set `pop_key` holds. ZMSCORE
-- takes them 1,000 at a time, well inside unpack()'s limit.
local function popularity_of(pop_key, items, rows)
  local members, listed = {}, {}
  local function add(m)
    if not listed[m] then
      listed[m] = true
      members[#members + 1] = m
    end
  end
  for _, m in ipairs(items) do add(m) end
  for _, row in ipairs(rows) do
    for j = 1, #row, 2 do add(row[j]) end
  end
  local pop = {}
  for lo = 1, #members, 1000 do
    local chunk = {unpack(members, lo, math.min(lo + 999, #members))}
    local scores = redis.call('ZMSCORE', pop_key, unpack(chunk))
    for j, m in ipairs(chunk) do
      if scores[j] then
        pop[#pop + 1] = m
        pop[#pop + 1] = scores[j]
      end
    end
  end
  return pop
end

