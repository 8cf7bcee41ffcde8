-- switchboard:durable-publish:1
-- Appends a message to a durable channel's stream and publishes it live with its position, in one
-- atomic step (a script runs alone: two publishers' offsets and PUBLISHes never interleave).
--
-- KEYS[1]  the channel's stream      KEYS[2]  its meta hash (fields `epoch`, `offset`)
-- ARGV[1]  the channel on Redis      ARGV[2]  the payload: a JSON object's text, starting with `{`
-- ARGV[3]  messages kept (MAXLEN ~)  ARGV[4]  time kept after the last publish, in milliseconds
-- ARGV[5]  the epoch to start with when the stream is new (or was lost)
-- ARGV[6]  the publish time, Unix milliseconds (kept with the entry as `t`)
--
-- Each entry's ID is `<offset>-0`, so that a range of offsets is an XRANGE. Returns
-- {epoch, offset}.
local offset = redis.call('HINCRBY', KEYS[2], 'offset', 1)
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[5]
  redis.call('HSET', KEYS[2], 'epoch', epoch)
end
local added = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], offset .. '-0', 'p', ARGV[2], 't', ARGV[6])
if type(added) == 'table' and added.err then
  -- The meta hash was lost but not the stream (or the reverse): start a new epoch.
  redis.call('DEL', KEYS[1])
  epoch = ARGV[5]
  offset = 1
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'offset', offset)
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '1-0', 'p', ARGV[2], 't', ARGV[6])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
local rest = string.sub(ARGV[2], 2)
local separator = ','
if string.match(rest, '^%s*}') then
  separator = ''
end
redis.call('PUBLISH', ARGV[1], '{"streamEpoch":"' .. epoch .. '","streamOffset":' .. offset .. separator .. rest)
return {epoch, offset}
