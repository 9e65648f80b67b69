-- portcullis-ratelimit: decides rate-limit checks atomically, one call per request (or per
-- Cluster slot). KEYS[i] is one descriptor's counter; ARGV has five numbers per key:
--   algorithm (1 = fixed window, 2 = GCRA), requests per unit, unit length in microseconds,
--   burst (GCRA), hits (negative gives hits back).
-- Time comes from Redis, so every service replica agrees on windows and arrival times.
-- Returns three integers per key: allowed (1/0), remaining, and microseconds until the quota
-- is whole again (allowed) or until a request of the same cost would be allowed (denied).
-- Mirrors src/algorithm.rs.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local eps = 1
local function int(x) return string.format('%.0f', x) end
local out = {}
for i, key in ipairs(KEYS) do
  local a = (i - 1) * 5
  local alg = tonumber(ARGV[a + 1])
  local limit = tonumber(ARGV[a + 2])
  local period = tonumber(ARGV[a + 3])
  local burst = tonumber(ARGV[a + 4])
  local hits = tonumber(ARGV[a + 5])
  local allowed, remaining, reset
  if alg == 1 then
    -- Fixed window aligned to the epoch; the hash remembers which window its count is for.
    local start = now - (now % period)
    local stored = redis.call('HMGET', key, 's', 'c')
    local count = 0
    if tonumber(stored[1]) == start then count = tonumber(stored[2]) or 0 end
    if hits ~= 0 then
      count = count + hits
      if count < 0 then count = 0 end
      redis.call('HSET', key, 's', int(start), 'c', int(count))
      redis.call('PEXPIREAT', key, int(math.floor((start + period) / 1000) + 1000))
    end
    if hits < 0 or count <= limit then
      allowed = 1
      remaining = limit - count
      if remaining < 0 then remaining = 0 end
    else
      allowed = 0
      remaining = 0
    end
    reset = start + period - now
  elseif limit == 0 then
    allowed = (hits < 0) and 1 or 0
    remaining = 0
    reset = period
  else
    -- GCRA: the value is the theoretical arrival time (microseconds).
    local interval = period / limit
    local tolerance = interval * burst
    local tat = tonumber(redis.call('GET', key)) or 0
    if tat < now then tat = now end
    local new
    if hits < 0 then
      new = tat + hits * interval
      if new < now then new = now end
      allowed = 1
    else
      new = tat + hits * interval
      allowed = (now + eps >= new - tolerance) and 1 or 0
    end
    if allowed == 1 then
      if hits ~= 0 then
        redis.call('SET', key, int(new), 'PX', int(math.max(1, math.ceil((new - now) / 1000))))
      end
      remaining = math.floor((tolerance - (new - now) + eps) / interval)
      reset = new - now
    else
      remaining = math.floor((tolerance - (tat - now) + eps) / interval)
      reset = new - tolerance - now
    end
    if remaining < 0 then remaining = 0 end
  end
  if reset < 0 then reset = 0 end
  out[#out + 1] = allowed
  out[#out + 1] = remaining
  out[#out + 1] = math.ceil(reset)
end
return out
