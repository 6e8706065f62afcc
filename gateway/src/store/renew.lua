-- Renewal: a replica still serving these requests keeps their reservations.
-- KEYS: 1 leases, 2 lease amounts, 3 reserved
-- ARGV: 1 now ms, 2 new expiry ms, 3 lifetime of the lease keys ms, 4.. lease ids
-- Returns {leases renewed}: one already settled or lapsed is not brought back.
local now = tonumber(ARGV[1])
purge_expired(KEYS[1], KEYS[2], KEYS[3], now)
local renewed = 0
for i = 4, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
    renewed = renewed + 1
  end
end
if renewed > 0 then
  for k = 1, 3 do redis.call('PEXPIRE', KEYS[k], ARGV[3]) end
end
return {renewed}
