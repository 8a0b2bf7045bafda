-- ARGV: room. The cluster-wide count and up to 100 names: a sample, not
-- the first 100 in any order (a room of thousands is not sorted inside
-- Redis); the node sorts them.
local pn = 'ssechat:pn:' .. ARGV[1]
local n = redis.call('HLEN', 'ssechat:pc:' .. ARGV[1])
local names, cursor = {}, '0'
repeat
  local r = redis.call('HSCAN', pn, cursor, 'COUNT', 100)
  cursor = r[1]
  for i = 2, #r[2], 2 do
    if #names < 100 then names[#names + 1] = r[2][i] end
  end
until cursor == '0' or #names >= 100
return {n, names}
