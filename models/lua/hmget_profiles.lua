-- HMGET of many profiles in one call (models/population.py): KEYS are profile hashes, ARGV the
-- fields; returns the values flat, profile after profile.
local out, n = {}, 0
for _, key in ipairs(KEYS) do
    local values = redis.call('HMGET', key, unpack(ARGV))
    for i = 1, #ARGV do out[n + i] = values[i] end
    n = n + #ARGV
end
return out
