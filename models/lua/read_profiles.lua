-- Many profiles in one call (models/population.py): KEYS are profile hashes, ARGV the fields
-- wanted; per profile, the fields' values (false: missing) and then, as one more element, its
-- purchase days flat (field p:<day>, value, ...; streams/profile.py). Reads only.
local out = {}
for i, key in ipairs(KEYS) do
  local row = redis.call('HMGET', key, unpack(ARGV))
  local all, days = redis.call('HGETALL', key), {}
  for k = 1, #all, 2 do
    if string.sub(all[k], 1, 2) == 'p:' then
      days[#days + 1] = all[k]
      days[#days + 1] = all[k + 1]
    end
  end
  row[#ARGV + 1] = days
  out[i] = row
end
return out
