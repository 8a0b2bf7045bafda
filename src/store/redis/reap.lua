-- Removes every presence entry of node ARGV[1] if its heartbeat is older
-- than ARGV[2] (ms), or unconditionally when ARGV[3] == '1' (its own clean
-- shutdown), publishing one batch of the leaves it owed per room. Returns
-- the rooms it had.
local node = ARGV[1]
local score = redis.call('ZSCORE', 'ssechat:nodes', node)
if ARGV[3] ~= '1' and score and tonumber(score) > tonumber(ARGV[2]) then return 0 end
local rooms = redis.call('SMEMBERS', 'ssechat:nrooms:' .. node)
for _, room in ipairs(rooms) do
  local j0, l0 = tally(room)
  local l, out = l0, {}
  local clients = redis.call('SMEMBERS', 'ssechat:pnode:' .. node .. ':' .. room)
  for _, client in ipairs(clients) do
    local gone = leave(room, node, client)
    if gone then
      l = l + 1
      out[#out + 1] = 'l ' .. client .. ' ' .. gone
    end
  end
  publish(room, j0, l0, j0, l, out)
  redis.call('DEL', 'ssechat:pnode:' .. node .. ':' .. room)
end
redis.call('DEL', 'ssechat:nrooms:' .. node)
redis.call('ZREM', 'ssechat:nodes', node)
return #rooms
