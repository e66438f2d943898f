-- Campaign sends of one batch (streams/agents.py), in one atomic call. KEYS[1]: the sends hash
-- (event id -> 'campaign\tcustomer\tsent\tgroup\toffer'), KEYS[2]: the campaigns index
-- ('campaign\tgroup' -> customers), KEYS[3]: the counters. ARGV[1]: clock ticks in the batch;
-- then per send: event id, campaign, customer, sent time (epoch s), group, offer.
-- A send is stored once, by its event id (one per campaign and customer): a redelivery finds it
-- and counts as a duplicate, so the sends, the index and consumed = applied + duplicates +
-- dead_lettered stay exact under at-least-once delivery and any crash (one script, one write).
local sends, index, counters = KEYS[1], KEYS[2], KEYS[3]
local applied, duplicates = 0, 0
for k = 2, #ARGV - 5, 6 do
  local campaign, group = ARGV[k + 1], ARGV[k + 4]
  local value = campaign .. '\t' .. ARGV[k + 2] .. '\t' .. ARGV[k + 3] .. '\t' .. group .. '\t' .. ARGV[k + 5]
  if redis.call('HSETNX', sends, ARGV[k], value) == 1 then
    redis.call('HINCRBY', index, campaign .. '\t' .. group, 1)
    applied = applied + 1
  else
    duplicates = duplicates + 1
  end
end
if applied + duplicates > 0 then redis.call('HINCRBY', counters, 'consumed', applied + duplicates) end
if applied > 0 then redis.call('HINCRBY', counters, 'applied', applied) end
if duplicates > 0 then redis.call('HINCRBY', counters, 'duplicates', duplicates) end
if tonumber(ARGV[1]) > 0 then redis.call('HINCRBY', counters, 'ticks', ARGV[1]) end
return {applied, duplicates}
