-- One node's gathering window of one room. ARGV: room, node, heartbeat
-- expiry, then (kind, client, name) per operation: `j` (the client's first
-- stream on this node), `l` (its last one here closed), `t` (typing).
-- Publishes the changes that are cluster-wide (a client's first node, its
-- last node) and the typing, once; returns {online, joined, left}.
local room, node = ARGV[1], ARGV[2]
redis.call('ZADD', 'ssechat:nodes', ARGV[3], node)
local pc, pn = 'ssechat:pc:' .. room, 'ssechat:pn:' .. room
local pnode = 'ssechat:pnode:' .. node .. ':' .. room
local j0, l0 = tally(room)
local j, l, out = j0, l0, {}
for i = 4, #ARGV, 3 do
  local kind, client, name = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if kind == 'j' then
    redis.call('SADD', 'ssechat:nrooms:' .. node, room)
    if redis.call('SADD', pnode, client) == 1 then
      redis.call('HSET', pn, client, name)
      if redis.call('HINCRBY', pc, client, 1) == 1 then
        j = j + 1
        out[#out + 1] = 'j ' .. client .. ' ' .. name
      end
    end
  elseif kind == 'l' then
    local gone = leave(room, node, client)
    if gone then
      l = l + 1
      out[#out + 1] = 'l ' .. client .. ' ' .. gone
    end
  else
    out[#out + 1] = 't ' .. client .. ' ' .. name
  end
end
local online = publish(room, j0, l0, j, l, out)
return {online, j, l}
