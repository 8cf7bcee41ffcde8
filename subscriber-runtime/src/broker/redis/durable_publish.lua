-- switchboard:durable-publish:2
-- Appends a message to a durable channel's stream and publishes it live with its position, in one
-- atomic step (a script runs alone: two publishers' offsets and PUBLISHes never interleave).
--
-- KEYS[1]  the channel's stream      KEYS[2]  its meta hash (fields `epoch`, `offset`)
-- ARGV[1]  the channel on Redis
-- ARGV[2]  the payload (a JSON object) after its opening `{`, with a `,` put first unless the
--          object is empty: `,"workerId":"w1","n":1}` for `{"workerId":"w1","n":1}`, `}` for `{}`
-- ARGV[3]  messages kept (MAXLEN ~)  ARGV[4]  time kept after the last publish, in milliseconds
-- ARGV[5]  the epoch to start with when the meta hash is new (first use, expiry, data lost)
--
-- The message, as published and as stored (field `m`), is the payload with the position first:
-- `{"streamEpoch":"<epoch>","streamOffset":<offset>,"workerId":"w1","n":1}`. Each entry's ID is
-- `<offset>-0`, so that a range of offsets is an XRANGE. Returns {epoch, offset}.
local offset = redis.call('HINCRBY', KEYS[2], 'offset', 1)
local epoch = false
if offset > 1 then
  epoch = redis.call('HGET', KEYS[2], 'epoch')
end
if not epoch then
  -- A new epoch: whatever stream an older one left goes with it.
  epoch = ARGV[5]
  redis.call('HSET', KEYS[2], 'epoch', epoch)
  redis.call('DEL', KEYS[1])
end
local message = '{"streamEpoch":"' .. epoch .. '","streamOffset":' .. offset .. ARGV[2]
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], offset .. '-0', 'm', message)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[1], message)
return {epoch, offset}
