-- Store an entry only if the caller's lease is still there: an invalidation that ran
-- since the caller's fetch deleted the lease, so a value read before it is dropped.
-- KEYS[1] the entry key; ARGV[1] lease marker; ARGV[2] entry; ARGV[3] ttl in seconds
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
