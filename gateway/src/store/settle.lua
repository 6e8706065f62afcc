-- Settlement: release a reservation, add the actual cost, take completion tokens. A settlement
-- with a lease closes it: the lease is remembered (KEYS[7], lease -> until ms) so that the same
-- settlement run again (an attempt that timed out in the replica but ran once Redis woke up, and
-- its retry) counts once, and an admission under that lease that runs after it takes nothing.
-- KEYS: 1 tpm tat, 2 spend today, 3 spend this month, 4 leases, 5 lease amounts, 6 reserved,
--       7 closed leases
-- ARGV: 1 now ms, 2 rate period ms, 3 lease id ('' for none), 4 cost nano-USD, 5 today's key
--       lives for (ms), 6 this month's key lives for, 7 tpm limit (0: none), 8 completion tokens,
--       9 the lease is remembered until (ms), 10 lifetime of the closed-leases key (ms)
-- Returns {spend today, spend this month, reserved}.
local now = tonumber(ARGV[1])
purge_expired(KEYS[4], KEYS[5], KEYS[6], now)
if ARGV[3] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now)
  if redis.call('ZSCORE', KEYS[7], ARGV[3]) then
    return {num(KEYS[2]), num(KEYS[3]), math.max(num(KEYS[6]), 0)}
  end
  redis.call('ZADD', KEYS[7], ARGV[9], ARGV[3])
  redis.call('PEXPIRE', KEYS[7], ARGV[10])
  local amount = redis.call('HGET', KEYS[5], ARGV[3])
  if amount then
    redis.call('HDEL', KEYS[5], ARGV[3])
    redis.call('ZREM', KEYS[4], ARGV[3])
    redis.call('DECRBY', KEYS[6], amount)
  end
end
if tonumber(ARGV[4]) > 0 then
  redis.call('INCRBY', KEYS[2], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  redis.call('INCRBY', KEYS[3], ARGV[4])
  redis.call('PEXPIRE', KEYS[3], ARGV[6])
end
if tonumber(ARGV[7]) > 0 and tonumber(ARGV[8]) > 0 then
  local _, _, _, tat = gcra(KEYS[1], tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[2]), now, true)
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.max(math.ceil(tat / 1000 - now), 1))
end
return {num(KEYS[2]), num(KEYS[3]), math.max(num(KEYS[6]), 0)}
