-- The candidates for the best n neighbours of one co row, read in Redis so that
-- a row of ~250 members does not travel whole to the API (serving/store.py).
--
-- KEYS[1] a co row (a hash, field "/ref" its decay landmark)   ARGV[1] n
--
-- Returns ONE JSON text: flat [member, count-as-stored, ...] for every member
-- whose count is at least the n-th largest (so every tie at the cut is there),
-- unordered: the caller orders them (count desc, member desc) in Python, where
-- strings compare by code point whatever Redis's locale.
local n = tonumber(ARGV[1])
local flat = redis.call('HGETALL', KEYS[1])
local values = {}
for j = 1, #flat, 2 do
  if flat[j] ~= '/ref' then values[#values + 1] = tonumber(flat[j + 1]) end
end
local cut = -math.huge
if #values > n then
  table.sort(values)
  cut = values[#values - n + 1]
end
local out = {}
for j = 1, #flat, 2 do
  if flat[j] ~= '/ref' and tonumber(flat[j + 1]) >= cut then
    out[#out + 1] = flat[j]
    out[#out + 1] = flat[j + 1]
  end
end
return cjson.encode(out)
