-- A commit's invalidation in one atomic step.
-- KEYS[1..ARGV[1]]  entry keys to delete (with any lease on them)
-- the other KEYS     tag keys, all set to the fresh tag ARGV[2]
local deletes = tonumber(ARGV[1])
for i = 1, #KEYS do
  if i <= deletes then
    redis.call('DEL', KEYS[i])
  else
    redis.call('SET', KEYS[i], ARGV[2])
  end
end
return #KEYS
