-- The read script of streams/state.py: one call per partition of a batch, all pipelined.
-- KEYS[1]: the partition's due index (every key read shares its hash slot, segstream/keys.py);
-- ARGV: the partition's profile prefix, due until ('': no due query), customers...
-- returns: the customers due by then with their scores (flat; empty without a query), then per
-- customer its profile hash (flat; its fields 'seen*' hold the applied events' digests)
local out = {{}}
if ARGV[2] ~= '' then out[1] = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'WITHSCORES') end
for k = 3, #ARGV do
  out[#out + 1] = redis.call('HGETALL', ARGV[1] .. ARGV[k])
end
return out
