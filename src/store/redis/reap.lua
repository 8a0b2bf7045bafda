-- Removes every presence entry of node ARGV[1] if its heartbeat is older
-- than ARGV[2] (ms), or unconditionally when ARGV[3] == '1' (its own clean
-- shutdown), sending the leave events it owed. Returns the rooms it had.
local node = ARGV[1]
local score = redis.call('ZSCORE', 'ssechat:nodes', node)
if ARGV[3] ~= '1' and score and tonumber(score) > tonumber(ARGV[2]) then return 0 end
local rooms = redis.call('SMEMBERS', 'ssechat:nrooms:' .. node)
for _, room in ipairs(rooms) do
  local clients = redis.call('SMEMBERS', 'ssechat:pnode:' .. node .. ':' .. room)
  for _, client in ipairs(clients) do leave(room, node, client) end
  redis.call('DEL', 'ssechat:pnode:' .. node .. ':' .. room)
end
redis.call('DEL', 'ssechat:nrooms:' .. node)
redis.call('ZREM', 'ssechat:nodes', node)
return #rooms
