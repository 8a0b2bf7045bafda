-- A client's first stream on this node opened in a room. Publishes `join`
-- if the client was online on no node before.
-- KEYS: pc, pn, pnode, nrooms, nodes. ARGV: client, name, room, node, expiry.
-- Returns the cluster-wide online count of the room.
redis.call('ZADD', KEYS[5], ARGV[5], ARGV[4])
redis.call('SADD', KEYS[4], ARGV[3])
local added = redis.call('SADD', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if added == 1 then
  local n = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
  if n == 1 then
    local online = redis.call('HLEN', KEYS[1])
    redis.call('PUBLISH', 'ssechat:events',
      'p\njoin\n' .. ARGV[3] .. '\n' .. online .. '\n' .. ARGV[1] .. '\n' .. ARGV[2])
  end
end
return redis.call('HLEN', KEYS[1])
