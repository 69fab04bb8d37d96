-- Everything one recommendation needs, in one round trip.
--
-- KEYS[1] {ns}:hist:{user}   KEYS[2] {ns}:trend   KEYS[3] {ns}:pop
-- ARGV[1] co key prefix "{ns}:co:"   ARGV[2] history entries to read
-- ARGV[3] distinct sources wanted    ARGV[4] co neighbours per source
-- ARGV[5] trending items to read
--
-- The co keys are derived here from the history, so they are not declared in
-- KEYS: fine on the single-node Redis the keyspace requires (core/keyspace.py),
-- and it is what saves the second round trip.
--
-- Returns ONE JSON text: [history, sources, co_rows, trending, pop]. History
-- entries stay raw (JSON text) for the caller to parse; each co row and the
-- trending list are flat [member, score, ...] as ZREVRANGE WITHSCORES gives them
-- (scores as strings); pop is flat [member, all-time count, ...] for the co-row
-- members the pop set holds (the blend's popularity damping divides by it).
-- cjson writes an empty table as {}, so the reader treats {} as [].
--
-- Why one JSON string rather than nested RESP arrays: the reply holds ~1,300
-- elements (10 co rows x 50 x 2 + 100 x 2 trending + 50 history), and
-- redis-py's pure-Python RESP parser (no hiredis) spent ~6-13 ms per request
-- walking them, against ~0.1 ms here for cjson.encode and ~0.1 ms for orjson
-- to decode the one bulk string on the client (measured, docs/loadtest.md).

local co_prefix = ARGV[1]
local hist_len = tonumber(ARGV[2])
local n_sources = tonumber(ARGV[3])
local per_item = tonumber(ARGV[4])
local n_trend = tonumber(ARGV[5])

local history = {}
if hist_len > 0 then
  history = redis.call('LRANGE', KEYS[1], 0, hist_len - 1)
end

-- Newest first, distinct; the same rule as serving.blend.recent_sources.
-- An entry that is not [ts, "item", ...] is skipped, not fatal (the same
-- rule as serving.store.parse_history).
local sources = {}
local seen = {}
for _, raw in ipairs(history) do
  if #sources >= n_sources then break end
  local ok, entry = pcall(cjson.decode, raw)
  if ok and type(entry) == 'table' then
    local item = entry[2]
    if type(entry[1]) == 'number' and type(item) == 'string' and item ~= ''
        and not seen[item] then
      seen[item] = true
      sources[#sources + 1] = item
    end
  end
end

local co_rows = {}
for i, item in ipairs(sources) do
  if per_item > 0 then
    co_rows[i] = redis.call('ZREVRANGE', co_prefix .. item, 0, per_item - 1, 'WITHSCORES')
  else
    co_rows[i] = {}
  end
end

local trending = {}
if n_trend > 0 then
  trending = redis.call('ZREVRANGE', KEYS[2], 0, n_trend - 1, 'WITHSCORES')
end

-- All-time popularity of every distinct co-row member (popularity.lua).
local pop = popularity_of(KEYS[3], {}, co_rows)

return cjson.encode({history, sources, co_rows, trending, pop})
