-- switchboard:durable-publish:3
-- Appends messages to a durable channel's stream and publishes each live with its position, in
-- one atomic step (a script runs alone: two publishers' offsets and PUBLISHes never interleave).
-- Several messages at once: a publisher sends what queued up while its previous call ran.
--
-- KEYS[1]  the channel's stream      KEYS[2]  its meta hash (fields `epoch`, `offset`)
-- ARGV[1]  the channel on Redis      ARGV[2]  messages kept (MAXLEN ~)
-- ARGV[3]  time kept after the last publish, in milliseconds
-- ARGV[4]  the epoch to start with when the meta hash is new (first use, expiry, data lost)
-- ARGV[5], ARGV[6], ...  the payloads (JSON objects), each after its opening `{`, with a `,` put
--          first unless the object is empty: `,"workerId":"w1","n":1}` for
--          `{"workerId":"w1","n":1}`, `}` for `{}`
--
-- Each message, as published and as stored (field `m`), is its payload with the position first:
-- `{"streamEpoch":"<epoch>","streamOffset":<offset>,"workerId":"w1","n":1}`; the payloads get
-- consecutive offsets, in order. Each entry's ID is `<offset>-0`, so that a range of offsets is an
-- XRANGE. Returns {epoch, the first payload's offset}.
local n = #ARGV - 4
local last = redis.call('HINCRBY', KEYS[2], 'offset', n)
local epoch = false
if last > n then
  epoch = redis.call('HGET', KEYS[2], 'epoch')
end
if not epoch then
  -- A new epoch from offset 1: whatever stream an older one left goes with it.
  epoch = ARGV[4]
  last = n
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'offset', last)
  redis.call('DEL', KEYS[1])
end
local first = last - n + 1
local head = '{"streamEpoch":"' .. epoch .. '","streamOffset":'
for i = 1, n do
  local offset = first + i - 1
  local message = head .. offset .. ARGV[4 + i]
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], offset .. '-0', 'm', message)
  redis.call('PUBLISH', ARGV[1], message)
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {epoch, first}
