-- Item rows for the API's item cache (serving/items.py), in one round trip.
--
-- ARGV[1] co key prefix "{ns}:co:"   ARGV[2] neighbours per row
-- ARGV[3..] the items whose rows to read
-- KEYS[1] {ns}:pop
--
-- Returns ONE JSON text (see fetch.lua for why): [rows, pop], rows aligned with
-- the items, each flat [member, count, ...] best first (ZREVRANGE WITHSCORES),
-- and pop flat [member, all-time count, ...] for every distinct member of those
-- rows, and every asked item, that the popularity set holds. cjson writes an
-- empty table as {}, so the reader treats {} as [].
--
-- Like fetch.lua, the co keys are derived here: single-node Redis.

local prefix = ARGV[1]
local per_item = tonumber(ARGV[2])
local rows = {}
local members = {}
local listed = {}
for i = 3, #ARGV do
  local item = ARGV[i]
  local row = {}
  if per_item > 0 then
    row = redis.call('ZREVRANGE', prefix .. item, 0, per_item - 1, 'WITHSCORES')
  end
  rows[#rows + 1] = row
  if not listed[item] then
    listed[item] = true
    members[#members + 1] = item
  end
  for j = 1, #row, 2 do
    local m = row[j]
    if not listed[m] then
      listed[m] = true
      members[#members + 1] = m
    end
  end
end
local pop = {}
for lo = 1, #members, 1000 do
  local chunk = {unpack(members, lo, math.min(lo + 999, #members))}
  local scores = redis.call('ZMSCORE', KEYS[1], unpack(chunk))
  for j, m in ipairs(chunk) do
    if scores[j] then
      pop[#pop + 1] = m
      pop[#pop + 1] = scores[j]
    end
  end
end
return cjson.encode({rows, pop})
