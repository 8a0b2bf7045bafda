-- Helpers prepended to batch.lua and reap.lua.
--
-- leave: removes one client of one node from a room; returns the client's
-- name if it is then online on no node (a leave to tell), else false.
-- tally: the room's joins and leaves ever (streams tell what changed since
-- their hello from it). publish: stores the new tally and publishes one
-- batch of the room's changes and typing (`b` payload), if any.
local function leave(room, node, client)
  local pc, pn = 'ssechat:pc:' .. room, 'ssechat:pn:' .. room
  if redis.call('SREM', 'ssechat:pnode:' .. node .. ':' .. room, client) == 1 then
    local n = redis.call('HINCRBY', pc, client, -1)
    if n <= 0 then
      redis.call('HDEL', pc, client)
      local name = redis.call('HGET', pn, client) or 'someone'
      redis.call('HDEL', pn, client)
      return name
    end
  end
  return false
end
local function tally(room)
  local t = redis.call('HMGET', 'ssechat:pt:' .. room, 'j', 'l')
  return tonumber(t[1] or '0'), tonumber(t[2] or '0')
end
local function publish(room, j0, l0, j, l, out)
  redis.call('HSET', 'ssechat:pt:' .. room, 'j', j, 'l', l)
  local online = redis.call('HLEN', 'ssechat:pc:' .. room)
  if #out > 0 then
    redis.call('PUBLISH', 'ssechat:events', 'b\n' .. room .. '\n' .. online .. '\n' ..
      j0 .. ' ' .. l0 .. '\n' .. j .. ' ' .. l .. '\n' .. table.concat(out, '\n'))
  end
  return online
end
