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
-- popularity_of comes from popularity.lua.

local prefix = ARGV[1]
local per_item = tonumber(ARGV[2])
local rows = {}
local items = {}
for i = 3, #ARGV do
  local row = {}
  if per_item > 0 then
    row = redis.call('ZREVRANGE', prefix .. ARGV[i], 0, per_item - 1, 'WITHSCORES')
  end
  rows[#rows + 1] = row
  items[#items + 1] = ARGV[i]
end
return cjson.encode({rows, popularity_of(KEYS[1], items, rows)})
