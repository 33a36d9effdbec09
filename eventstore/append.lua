-- Append a batch of records to one room's stream, assigning the next sequence numbers atomically.
--
-- KEYS[1] room events stream, KEYS[2] room meta hash, KEYS[3] room lease hash (all share the room's hash tag)
-- KEYS[4] (optional) the room's archive tombstone: its last seq, left when the archiver removed the room
--   (eventstore.retention); a room written again continues after it, and the tombstone goes
-- ARGV[1] fencing epoch of the writer (0 = unfenced)
-- ARGV[2] expected current seq (-1 = any): a stale expectation is refused
-- ARGV[3] batch token ('' = none): the same token as the room's last batch means this is a retry
-- ARGV[4] MAXLEN for the stream (0 = keep everything)
-- ARGV[5] the records, framed (codec.frame_batch): per record a 12-byte header of three big-endian uint32
--   lengths, then its type, its JSON starting {"type":"<type>","seq":0, and its data argument
--   (the data argument is '' for no data field, else 'd' followed by the raw payload).
--   One argument for the whole batch keeps client-side command packing cheap.
-- Optional, for an append that must happen once (eventstore.once): KEYS[5] the room's once hash, ARGV[6] the
--   batch's once id. A batch whose id the hash holds is not written again; the hash maps the id to the batch's
--   last seq.
--
-- Replies: {'OK', first, last, last_id} | {'DUP', first, last, last_id} | {'STALE', current}
--          | {'FENCED', current, lease_epoch} | {'SEEN', seq}; a malformed call is an error reply and writes nothing.
local meta = KEYS[2]
local token = ARGV[3]
local once = ARGV[6]
if once ~= nil then
  if #KEYS ~= 5 or once == '' then
    return redis.error_reply('ERR append: a once id needs KEYS[5] and a non-empty ARGV[6]')
  end
  local seen = redis.call('HGET', KEYS[5], once)
  if seen then
    return {'SEEN', tonumber(seen)}
  end
end
if token ~= '' and redis.call('HGET', meta, 'batch') == token then
  local m = redis.call('HMGET', meta, 'first', 'seq', 'last')
  return {'DUP', tonumber(m[1]), tonumber(m[2]), m[3]}
end
local stored = redis.call('HGET', meta, 'seq')
local tomb = KEYS[4]
if not stored and tomb then
  stored = redis.call('GET', tomb)
else
  tomb = nil
end
local cur = tonumber(stored or '0')
local epoch = tonumber(ARGV[1])
if epoch > 0 then
  local lease_epoch = tonumber(redis.call('HGET', KEYS[3], 'epoch') or '0')
  if epoch < lease_epoch then
    return {'FENCED', cur, lease_epoch}
  end
end
local expected = tonumber(ARGV[2])
if expected >= 0 and expected ~= cur then
  return {'STALE', cur}
end
if #ARGV ~= 5 and #ARGV ~= 6 then
  return redis.error_reply('ERR append: expected 5 or 6 arguments, got ' .. #ARGV)
end
-- Parse and check every record before writing any: a malformed batch leaves the room untouched. Lua strings
-- are costly to create, so heads are built once per type and checked in place (string.find at a position).
local blob = ARGV[5]
local size = #blob
local types, rests, datas, heads = {}, {}, {}, {}
local pos = 1
local n = 0
while pos <= size do
  if pos + 11 > size then
    return redis.error_reply('ERR append: record ' .. n .. ' has a truncated header')
  end
  local lt, lr, ld, p = struct.unpack('>I4I4I4', blob, pos)
  local r0 = p + lt
  local stop = r0 + lr + ld
  if stop - 1 > size then
    return redis.error_reply('ERR append: record ' .. n .. ' is truncated')
  end
  local t = string.sub(blob, p, r0 - 1)
  local head = heads[t]
  if head == nil then
    head = '{"type":"' .. t .. '","seq":0,'
    heads[t] = head
  end
  local hl = #head
  if lr < hl or string.find(blob, head, r0, true) ~= r0 then
    return redis.error_reply('ERR append: record ' .. n .. ' does not start with ' .. head)
  end
  n = n + 1
  types[n] = t
  rests[n] = string.sub(blob, r0 + hl, r0 + lr - 1)
  if ld > 0 then
    datas[n] = string.sub(blob, r0 + lr + 1, stop - 1)
  else
    datas[n] = false
  end
  pos = stop
end
if n < 1 then
  return redis.error_reply('ERR append: no records')
end
local maxlen = tonumber(ARGV[4])
local id = ''
for i = 1, n do
  local t = types[i]
  local seq = string.format('%d', cur + i)
  local rec = '{"type":"' .. t .. '","seq":' .. seq .. ',' .. rests[i]
  local data = datas[i]
  if maxlen > 0 then
    if data then
      id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'type', t, 'seq', seq, 'rec', rec,
        'data', data)
    else
      id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'type', t, 'seq', seq, 'rec', rec)
    end
  elseif data then
    id = redis.call('XADD', KEYS[1], '*', 'type', t, 'seq', seq, 'rec', rec, 'data', data)
  else
    id = redis.call('XADD', KEYS[1], '*', 'type', t, 'seq', seq, 'rec', rec)
  end
end
redis.call('HSET', meta, 'seq', string.format('%d', cur + n), 'first', string.format('%d', cur + 1),
  'last', id, 'batch', token)
if once ~= nil then
  redis.call('HSET', KEYS[5], once, string.format('%d', cur + n))
end
if tomb then
  redis.call('DEL', tomb)
end
return {'OK', cur + 1, cur + n, id}
