-- Appends one message: takes the next id from the one global counter, adds
-- it to the room's stream (trimmed to the history size), records the
-- idempotency key, and publishes it, atomically, so the publish order is
-- the id order on every node.
-- KEYS: seq, room stream, rooms by latest id (sorted set), the idempotency
--       key (sender and client_msg_id; unused without one). Each key is a
--       string of its own that expires on its own: a hash per sender would
--       have its TTL renewed by every post and grow for as long as the
--       sender keeps posting.
-- ARGV: room, name, text, ts, sender, client_msg_id ('' for none),
--       history (0: untrimmed), idempotency TTL in seconds.
-- Returns {1, id} for a new message, {0, "id room"} for a duplicate.
if ARGV[6] ~= '' then
  local found = redis.call('GET', KEYS[4])
  if found then return {0, found} end
end
local id = redis.call('INCR', KEYS[1])
if ARGV[7] == '0' then
  redis.call('XADD', KEYS[2], id .. '-0', 'n', ARGV[2], 't', ARGV[3], 'ts', ARGV[4], 's', ARGV[5])
else
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], id .. '-0', 'n', ARGV[2], 't', ARGV[3], 'ts', ARGV[4], 's', ARGV[5])
end
redis.call('ZADD', KEYS[3], id, ARGV[1])
if ARGV[6] ~= '' then
  redis.call('SET', KEYS[4], id .. ' ' .. ARGV[1], 'EX', ARGV[8])
end
redis.call('PUBLISH', 'ssechat:events',
  'm\n' .. id .. '\n' .. ARGV[1] .. '\n' .. ARGV[4] .. '\n' .. ARGV[5] .. '\n' .. ARGV[2] .. '\n' .. ARGV[3])
return {1, tostring(id)}
