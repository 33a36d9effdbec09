-- Append a batch of records to one room's stream, assigning the next sequence numbers atomically.
--
-- KEYS[1] room events stream, KEYS[2] room meta hash, KEYS[3] room lease hash (all share the room's hash tag)
-- ARGV[1] fencing epoch of the writer (0 = unfenced)
-- ARGV[2] expected current seq (-1 = any): a stale expectation is refused
-- ARGV[3] batch token ('' = none): the same token as the room's last batch means this is a retry
-- ARGV[4] MAXLEN for the stream (0 = keep everything)
-- then, per record, three values: type, record JSON starting {"type":"<type>","seq":0, , data argument
--   (the data argument is '' for no data field, else 'd' followed by the raw payload)
--
-- Replies: {'OK', first, last, last_id} | {'DUP', first, last, last_id} | {'STALE', current}
--          | {'FENCED', current, lease_epoch}; a malformed call is an error reply.
local meta = KEYS[2]
local token = ARGV[3]
if token ~= '' and redis.call('HGET', meta, 'batch') == token then
  local m = redis.call('HMGET', meta, 'first', 'seq', 'last')
  return {'DUP', tonumber(m[1]), tonumber(m[2]), m[3]}
end
local cur = tonumber(redis.call('HGET', meta, 'seq') or '0')
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
local n = (#ARGV - 4) / 3
if n < 1 or n ~= math.floor(n) then
  return redis.error_reply('ERR append: records must come in (type, rec, data) triples')
end
local maxlen = tonumber(ARGV[4])
local id = ''
for i = 0, n - 1 do
  local t = ARGV[5 + 3 * i]
  local rec = ARGV[6 + 3 * i]
  local data = ARGV[7 + 3 * i]
  local head = '{"type":"' .. t .. '","seq":0,'
  if string.sub(rec, 1, #head) ~= head then
    return redis.error_reply('ERR append: record ' .. i .. ' does not start with ' .. head)
  end
  local seq = string.format('%d', cur + i + 1)
  rec = '{"type":"' .. t .. '","seq":' .. seq .. ',' .. string.sub(rec, #head + 1)
  local args = {KEYS[1]}
  if maxlen > 0 then
    table.insert(args, 'MAXLEN')
    table.insert(args, '~')
    table.insert(args, maxlen)
  end
  table.insert(args, '*')
  table.insert(args, 'type')
  table.insert(args, t)
  table.insert(args, 'seq')
  table.insert(args, seq)
  table.insert(args, 'rec')
  table.insert(args, rec)
  if #data > 0 then
    table.insert(args, 'data')
    table.insert(args, string.sub(data, 2))
  end
  id = redis.call('XADD', unpack(args))
end
redis.call('HSET', meta, 'seq', string.format('%d', cur + n), 'first', string.format('%d', cur + 1),
  'last', id, 'batch', token)
return {'OK', cur + 1, cur + n, id}
