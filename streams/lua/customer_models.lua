-- The models document and one customer's entries of the runs it names, in one atomic call
-- (streams/readmodel.py, customer_models): a reader sees the runs in force before a retrain's
-- switch or after it, never one of each. KEYS[1]: the models document; ARGV: scores prefix,
-- recommendations prefix, customer.
local doc = redis.call('GET', KEYS[1])
if not doc then return {false, false, false} end
local models = cjson.decode(doc)
local scores, recs = false, false
if models['clv'] then scores = redis.call('HGET', ARGV[1] .. models['clv'], ARGV[3]) end
if models['recommendations'] then
    local key = ARGV[2] .. models['recommendations']
    recs = redis.call('HGET', key, ARGV[3]) or redis.call('HGET', key, '*')
end
return {doc, scores, recs}
