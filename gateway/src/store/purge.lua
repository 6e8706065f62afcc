-- Drops reservations whose lease has expired (a replica crashed or lost Redis before settling)
-- and gives their money back. KEYS[L], KEYS[L+1], KEYS[L+2]: leases (zset lease -> expiry ms),
-- lease amounts (hash lease -> nano-USD), reserved total (integer).
local function purge_expired(leases, amounts, reserved, now)
  local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
  if #expired == 0 then return end
  local total = 0
  for _, lease in ipairs(expired) do
    local amount = redis.call('HGET', amounts, lease)
    if amount then
      total = total + tonumber(amount)
      redis.call('HDEL', amounts, lease)
    end
  end
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  if total > 0 then redis.call('DECRBY', reserved, string.format('%.0f', total)) end
end

-- GCRA on one key's theoretical arrival time (µs; times in and out are ms), as `limits::gcra`.
-- Returns allowed, remaining, retry_after_ms, the new tat (nil when refused). `force` takes the
-- units even past the limit.
local function gcra(key, limit, cost, period_ms, now_ms, force)
  local now, period = now_ms * 1000, period_ms * 1000
  limit = math.max(limit, 1)
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  -- cost × period / limit, rounded down once (a per-unit interval rounded down raised 40M to 60M).
  local new_tat = tat + math.floor(cost * period / limit)
  local allow_at = new_tat - period
  local function remaining(t) return math.floor(math.max(period - (t - now), 0) * limit / period) end
  if now < allow_at and not force then
    return false, remaining(tat), math.ceil((allow_at - now) / 1000), nil
  end
  return true, remaining(new_tat), 0, new_tat
end

local function num(key)
  return tonumber(redis.call('GET', key) or '0')
end
