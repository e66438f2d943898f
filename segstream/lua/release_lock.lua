-- Delete the lock KEYS[1] only if ARGV[1] (this run) holds it: a run whose lock expired and was
-- taken by another never releases the other's.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
