-- Admission: rate limits and the budget reservation, all or nothing.
-- KEYS: 1 rpm tat, 2 tpm tat, 3 spend today, 4 spend this month, 5 leases, 6 lease amounts, 7 reserved,
--       8 closed leases (see settle.lua)
-- ARGV: 1 now ms, 2 rate period ms, 3 rpm limit (0: none), 4 rpm cost, 5 tpm limit (0: none),
--       6 tpm cost, 7 daily limit nano-USD (-1: none), 8 monthly limit (-1: none), 9 reservation,
--       10 lease id, 11 lease expiry ms, 12 lifetime of the lease keys ms
-- Returns {refused (0 no, 1 requests, 2 tokens, 3 budget, 4 the lease is already closed),
-- retry_after_ms, rpm remaining (-1: no limit), tpm remaining, spend today, spend this month, reserved}.
local now = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
purge_expired(KEYS[5], KEYS[6], KEYS[7], now)
-- An admission that runs after its lease was closed: its replica gave up waiting for it and
-- released the lease (or it settled already). It takes nothing.
if tonumber(ARGV[9]) > 0 and ARGV[10] ~= '' and redis.call('ZSCORE', KEYS[8], ARGV[10]) then
  return {4, 0, -1, -1, num(KEYS[3]), num(KEYS[4]), math.max(num(KEYS[7]), 0)}
end

local rpm_ok, rpm_left, rpm_retry, rpm_tat = true, -1, 0, nil
if tonumber(ARGV[3]) > 0 then
  rpm_ok, rpm_left, rpm_retry, rpm_tat = gcra(KEYS[1], tonumber(ARGV[3]), tonumber(ARGV[4]), period, now, false)
end
local tpm_ok, tpm_left, tpm_retry, tpm_tat = true, -1, 0, nil
if tonumber(ARGV[5]) > 0 then
  tpm_ok, tpm_left, tpm_retry, tpm_tat = gcra(KEYS[2], tonumber(ARGV[5]), tonumber(ARGV[6]), period, now, false)
end
local spent_day, spent_month, reserved = num(KEYS[3]), num(KEYS[4]), math.max(num(KEYS[7]), 0)
local function reply(refused, retry)
  if refused > 0 then
    -- Nothing was taken: report what is left as it stands.
    if rpm_ok and rpm_left >= 0 then rpm_left = rpm_left + tonumber(ARGV[4]) end
    if tpm_ok and tpm_left >= 0 then tpm_left = tpm_left + tonumber(ARGV[6]) end
  end
  return {refused, retry, rpm_left, tpm_left, spent_day, spent_month, reserved}
end
if not rpm_ok then return reply(1, rpm_retry) end
if not tpm_ok then return reply(2, tpm_retry) end

local reserve = tonumber(ARGV[9])
local function over(spent, limit)
  return limit >= 0 and spent + reserved + reserve > limit
end
if reserve > 0 and (over(spent_day, tonumber(ARGV[7])) or over(spent_month, tonumber(ARGV[8]))) then
  return reply(3, 0)
end

if rpm_tat then redis.call('SET', KEYS[1], string.format('%.0f', rpm_tat), 'PX', math.max(math.ceil(rpm_tat / 1000 - now), 1)) end
if tpm_tat then redis.call('SET', KEYS[2], string.format('%.0f', tpm_tat), 'PX', math.max(math.ceil(tpm_tat / 1000 - now), 1)) end
if reserve > 0 then
  redis.call('ZADD', KEYS[5], ARGV[11], ARGV[10])
  redis.call('HSET', KEYS[6], ARGV[10], ARGV[9])
  redis.call('INCRBY', KEYS[7], ARGV[9])
  for k = 5, 7 do redis.call('PEXPIRE', KEYS[k], ARGV[12]) end
  reserved = reserved + reserve
end
return reply(0, 0)
