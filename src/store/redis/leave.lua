-- A client's last stream on this node closed. ARGV: room, node, client.
-- Returns the cluster-wide online count of the room.
leave(ARGV[1], ARGV[2], ARGV[3])
return redis.call('HLEN', 'ssechat:pc:' .. ARGV[1])
