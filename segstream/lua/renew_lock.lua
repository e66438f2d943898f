-- Extend the lock KEYS[1] to ARGV[2] ms only if ARGV[1] holds it, in one step: a GET followed by
-- a PEXPIRE could extend a lock another holder took in between. Returns 1 if renewed, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
