-- The read script of streams/state.py (one call per batch).
-- ARGV: profile prefix, number of due queries, (due key, due until) * queries, customers...
-- returns: per query the due customers with their scores (flat), then per customer its profile
-- hash (flat; its field 'seen' holds the applied events' digests)
local out, queries = {}, tonumber(ARGV[2])
for k = 3, 2 + 2 * queries, 2 do
  out[#out + 1] = redis.call('ZRANGEBYSCORE', ARGV[k], '-inf', ARGV[k + 1], 'WITHSCORES')
end
for k = 3 + 2 * queries, #ARGV do
  out[#out + 1] = redis.call('HGETALL', ARGV[1] .. ARGV[k])
end
return out
