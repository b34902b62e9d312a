-- Read an entry, checked against its tags, or take the lease to fill it.
-- KEYS[1]      the entry key
-- KEYS[2..n]   tag keys whose current values the entry must start with
-- ARGV[1]      schema id that follows the tags in a valid entry
-- ARGV[2]      fresh tag for tag keys that do not exist yet
-- ARGV[3]      the caller's lease marker (starts with "L")
-- ARGV[4]      lease lifetime in milliseconds
-- ARGV[5]      "1" to check the entry without returning it (the caller reads it with a GET
--              sent right after: a large value is expensive to copy through Lua)
-- ARGV[6..m]   tag values the caller already read (Redis Cluster: tags in other slots);
--              they come first, before the tags of KEYS[2..n]
-- Returns {entry, milliseconds it has left} on a hit (with ARGV[5] "1", the header the
--         entry starts with instead of the entry),
--         {false, leased (0/1), tag_1, ..., tag_n} otherwise.
local tags = {}
for i = 6, #ARGV do
  tags[#tags + 1] = ARGV[i]
end
for i = 2, #KEYS do
  local tag = redis.call('GET', KEYS[i])
  if not tag then
    tag = ARGV[2]
    redis.call('SET', KEYS[i], tag)
  end
  tags[#tags + 1] = tag
end
local want = table.concat(tags) .. ARGV[1]
local peek = ARGV[5] == '1'
local entry
if peek then
  entry = redis.call('GETRANGE', KEYS[1], 0, #want - 1)  -- '' when there is no such key
else
  entry = redis.call('GET', KEYS[1])
end
if entry and entry ~= '' then
  if string.sub(entry, 1, 1) == 'L' then
    -- another reader holds the lease: it fills, we only read the database
    return {false, 0, unpack(tags)}
  end
  if string.sub(entry, 1, #want) == want then
    if peek then
      return {want, redis.call('PTTL', KEYS[1])}
    end
    return {entry, redis.call('PTTL', KEYS[1])}
  end
end
-- empty or outdated: whoever fills must hold this lease when the fill arrives
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return {false, 1, unpack(tags)}
