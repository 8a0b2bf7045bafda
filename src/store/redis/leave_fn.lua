-- Removes one client of one node from a room, publishing `leave` if it is
-- then online on no node. Prepended to leave.lua and reap.lua.
local function leave(room, node, client)
  local pc, pn = 'ssechat:pc:' .. room, 'ssechat:pn:' .. room
  if redis.call('SREM', 'ssechat:pnode:' .. node .. ':' .. room, client) == 1 then
    local n = redis.call('HINCRBY', pc, client, -1)
    if n <= 0 then
      redis.call('HDEL', pc, client)
      local name = redis.call('HGET', pn, client) or 'someone'
      redis.call('HDEL', pn, client)
      local online = redis.call('HLEN', pc)
      redis.call('PUBLISH', 'ssechat:events',
        'p\nleave\n' .. room .. '\n' .. online .. '\n' .. client .. '\n' .. name)
    end
  end
end
