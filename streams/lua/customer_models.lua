-- The models document and one customer's entries of the runs it names, in one atomic call
-- (streams/readmodel.py, customer_models): a reader sees the runs in force before a retrain's
-- switch or after it, never one of each. KEYS[1]: the models document; ARGV: scores prefix,
-- recommendations prefix, uplift prefix, customer.
local doc = redis.call('GET', KEYS[1])
if not doc then return {false, false, false, false} end
local models = cjson.decode(doc)
local customer = ARGV[4]
local scores, recs, uplift = false, false, false
if models['clv'] then scores = redis.call('HGET', ARGV[1] .. models['clv'], customer) end
if models['recommendations'] then
    local key = ARGV[2] .. models['recommendations']
    recs = redis.call('HGET', key, customer) or redis.call('HGET', key, '*')
end
if models['uplift'] then uplift = redis.call('HGET', ARGV[3] .. models['uplift'], customer) end
return {doc, scores, recs, uplift}
