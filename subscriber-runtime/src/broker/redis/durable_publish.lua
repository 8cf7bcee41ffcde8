-- switchboard:durable-publish:4
-- Appends messages to a durable channel's stream and publishes each live with its position, in
-- one atomic step (a script runs alone: two publishers' offsets and PUBLISHes never interleave).
-- Several messages at once: a publisher sends what queued up while its previous call ran.
--
-- KEYS[1]  the channel's stream      KEYS[2]  its meta hash (fields `epoch`, `offset`, `check`)
-- ARGV[1]  the channel on Redis      ARGV[2]  messages kept (MAXLEN ~)
-- ARGV[3]  the window: how long each message is kept, in milliseconds
-- ARGV[4]  the epoch to start with when the meta hash is new (first use, expiry, data lost)
-- ARGV[5]  the publisher's clock, in milliseconds since the Unix epoch
-- ARGV[6], ARGV[7], ...  the payloads (JSON objects), each after its opening `{`, with a `,`
--          put first unless the object is empty: `,"workerId":"w1","n":1}` for
--          `{"workerId":"w1","n":1}`, `}` for `{}`
--
-- Each message, as published and as stored (field `m`), is its payload with the position first:
-- `{"streamEpoch":"<epoch>","streamOffset":<offset>,"workerId":"w1","n":1}`; the payloads get
-- consecutive offsets, in order. Each entry's ID is `<offset>-0`, so that a range of offsets is an
-- XRANGE; its field `t` is ARGV[5]. Returns {epoch, the first payload's offset}.
--
-- The window: when the meta hash's `check` time has come (once per sixteenth of the window), the
-- entries older than the window are trimmed (oldest first, at most 2,048 looked at a call; `check`
-- stays due when more remain), and both keys are set to expire a window and a sixteenth later,
-- so they live at least a window after the last publish. Each message is so kept at least a
-- window and at most a window and a sixteenth.
local n = #ARGV - 5
local last = redis.call('HINCRBY', KEYS[2], 'offset', n)
local epoch = false
local check = false
if last > n then
  local meta = redis.call('HMGET', KEYS[2], 'epoch', 'check')
  epoch = meta[1]
  check = meta[2]
end
if not epoch then
  -- A new epoch from offset 1: whatever stream an older one left goes with it.
  epoch = ARGV[4]
  last = n
  check = false
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'offset', last)
  redis.call('DEL', KEYS[1])
end
local first = last - n + 1
local head = '{"streamEpoch":"' .. epoch .. '","streamOffset":'
for i = 1, n do
  local offset = first + i - 1
  local message = head .. offset .. ARGV[5 + i]
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], offset .. '-0', 'm', message, 't', ARGV[5])
  redis.call('PUBLISH', ARGV[1], message)
end
local now = tonumber(ARGV[5]) or 0
if not check or now >= (tonumber(check) or 0) then
  local window = tonumber(ARGV[3]) or 0
  local slack = math.max(1, math.floor(window / 16))
  local cutoff = now - window
  local from = '-'
  local keep = false
  local old = false
  for round = 1, 16 do
    local entries = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', 128)
    for _, entry in ipairs(entries) do
      local fields = entry[2]
      if fields[3] ~= 't' or (tonumber(fields[4]) or cutoff) >= cutoff then
        keep = entry[1]
        break
      end
      old = entry[1]
    end
    if keep or #entries < 128 then
      break
    end
    from = '(' .. old
  end
  if old then
    redis.call('XTRIM', KEYS[1], 'MINID', keep or old)
  end
  if keep or not old then
    redis.call('HSET', KEYS[2], 'check', now + slack)
  end
  redis.call('PEXPIRE', KEYS[1], window + slack)
  redis.call('PEXPIRE', KEYS[2], window + slack)
end
return {epoch, first}
