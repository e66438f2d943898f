-- Many profiles in one call (models/population.py): KEYS are profile hashes, ARGV the fields
-- wanted; per profile, the fields' values (false: missing) and then, as one more element, its
-- purchase days flat (field p:<day>, value, ...; streams/profile.py). One HGETALL a profile
-- gives both. Reads only.
local out = {}
for i, key in ipairs(KEYS) do
  local all, fields, days = redis.call('HGETALL', key), {}, {}
  for k = 1, #all, 2 do
    if string.sub(all[k], 1, 2) == 'p:' then
      days[#days + 1] = all[k]
      days[#days + 1] = all[k + 1]
    else
      fields[all[k]] = all[k + 1]
    end
  end
  local row = {}
  for n, name in ipairs(ARGV) do row[n] = fields[name] or false end
  row[#ARGV + 1] = days
  out[i] = row
end
return out
