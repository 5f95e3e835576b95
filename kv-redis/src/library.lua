#!lua name=kv
-- The kv function library: every read and write of one project runs as
-- one of these functions on the master of the project's hash slot, so a
-- transaction is atomic without locks or MULTI.
--
-- Keys of project P all carry the hash tag {P} (one slot, one shard):
--   kv:{P}:m        hash: v (newest version), inc (incarnation),
--                   k (keys held), b (bytes held: keys plus values)
--   kv:{P}:h        hash: key -> entry (8-byte LE version, 8-byte LE
--                   deadline in unix ms or 0, then the encoded value)
--   kv:{P}:i        sorted set, all scores 0: the keys in byte order
--   kv:{P}:d        sorted set: key -> deadline (keys with a TTL)
--   kv:{P}:s        stream: one entry per change, ID = version-0
--   kv:{P}:r:I:ID   string: outcome of request id ID in incarnation I
--   kv:{P}:w:I:W    string: outcome of write W (a front-end's own id)
--
-- The front-end evaluates transactions (it holds the engine's evaluator)
-- against a snapshot read by kv_snapshot, and kv_apply writes the result
-- only if the project's version is still the one read: any change in
-- between makes it answer "conflict" and the front-end evaluates again.
--
-- Numbers go through string.format('%d') before they become strings:
-- Lua 5.1's tostring writes 1.7e+12 for a version above 10^11.

local VERSION = '__KV_LIBRARY_VERSION__'

local function int(n)
  return string.format('%d', n)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- "kv:{P}:m" -> "kv:{P}:"
local function prefix(meta)
  return string.sub(meta, 1, -2)
end

local function counters(meta)
  local m = redis.call('HMGET', meta, 'v', 'inc', 'k', 'b')
  return tonumber(m[1] or 0) or 0, tonumber(m[2] or 0) or 0,
         tonumber(m[3] or 0) or 0, tonumber(m[4] or 0) or 0
end

-- Live keys: every key minus the ones whose deadline has come.
local function live_count(p, now)
  return redis.call('ZCARD', p .. 'i') - redis.call('ZCOUNT', p .. 'd', '-inf', int(now))
end

-- The entries of ARGV[from..] as HMGET answers (false when absent).
local function entries(p, args, from)
  if #args < from then
    return {}
  end
  return redis.call('HMGET', p .. 'h', unpack(args, from))
end

local function version()
  return VERSION
end

-- get / get_many / has: {now, inc, v, entry...}. The front-end compares
-- each entry's deadline with `now`, this call's reading of the server
-- clock: an expired entry is never answered.
local function get(keys, args)
  local p = prefix(keys[1])
  local v, inc = counters(keys[1])
  return {now_ms(), inc, v, entries(p, args, 1)}
end

-- One page: ARGV = min, max (ZRANGEBYLEX bounds), count.
-- {now, inc, v, {key...}, {entry...}}
local function list(keys, args)
  local p = prefix(keys[1])
  local v, inc = counters(keys[1])
  local names = redis.call('ZRANGEBYLEX', p .. 'i', args[1], args[2], 'LIMIT', 0, tonumber(args[3]))
  local found = {}
  if #names > 0 then
    found = redis.call('HMGET', p .. 'h', unpack(names))
  end
  return {now_ms(), inc, v, names, found}
end

-- What a transaction group is evaluated against. ARGV = the number of
-- request ids, the ids, then the keys.
-- {now, inc, v, keys held, bytes held, live keys, due keys,
--  {request record...}, {entry...}}
local function snapshot(keys, args)
  local p = prefix(keys[1])
  local now = now_ms()
  local v, inc, k, b = counters(keys[1])
  local n = tonumber(args[1])
  local records = {}
  for i = 1, n do
    records[i] = redis.call('GET', p .. 'r:' .. int(inc) .. ':' .. args[1 + i]) or false
  end
  local due = redis.call('ZCOUNT', p .. 'd', '-inf', int(now))
  return {now, inc, v, k, b, live_count(p, now), due, records, entries(p, args, n + 2)}
end

local function add_event(p, history, ver, fields)
  redis.call('XADD', p .. 's', 'MAXLEN', '~', history, int(ver) .. '-0', unpack(fields))
end

local function remove_key(p, key)
  redis.call('HDEL', p .. 'h', key)
  redis.call('ZREM', p .. 'i', key)
  redis.call('ZREM', p .. 'd', key)
end

-- Applies an evaluated group if the project is still as read.
-- ARGV = incarnation, base version, horizon (the earliest deadline the
-- evaluation relied on; 0 for none), keys held after, bytes held after,
-- history length, request-id window ms, number of writes, then per
-- write: write id, request id ("" for none), outcome record; then the
-- changes, 4 fields each: kind (s, d, e, c), version, key, entry (or "").
-- {"ok"} | {"dup", {outcome...}} | {"gone", inc} | {"conflict"}
local function apply(keys, args)
  local p = prefix(keys[1])
  local expected_inc = tonumber(args[1])
  local v, inc = counters(keys[1])
  local writes = tonumber(args[8])
  local at = 9
  if writes > 0 then
    -- A resend of a call that was applied: answer what it answered.
    local first = p .. 'w:' .. int(inc) .. ':' .. args[at]
    if redis.call('EXISTS', first) == 1 then
      local out = {}
      for i = 0, writes - 1 do
        out[i + 1] = redis.call('GET', p .. 'w:' .. int(inc) .. ':' .. args[at + 3 * i]) or ''
      end
      return {'dup', out}
    end
  end
  if inc ~= expected_inc then
    return {'gone', inc}
  end
  if v ~= tonumber(args[2]) then
    return {'conflict'}
  end
  local now = now_ms()
  local horizon = tonumber(args[3])
  if horizon > 0 and now >= horizon then
    return {'conflict'}
  end
  local history = tonumber(args[6])
  local window = tonumber(args[7])
  for i = 0, writes - 1 do
    local wid, rid, record = args[at + 3 * i], args[at + 3 * i + 1], args[at + 3 * i + 2]
    if rid ~= '' then
      local rkey = p .. 'r:' .. int(inc) .. ':' .. rid
      if redis.call('EXISTS', rkey) == 1 then
        return {'conflict'}
      end
      redis.call('SET', rkey, record, 'PX', window)
    end
    if wid ~= '' then
      redis.call('SET', p .. 'w:' .. int(inc) .. ':' .. wid, record, 'PX', 120000)
    end
  end
  at = at + 3 * writes
  local last = v
  while at + 3 <= #args do
    local kind, ver, key, entry = args[at], tonumber(args[at + 1]), args[at + 2], args[at + 3]
    at = at + 4
    last = ver
    if kind == 's' then
      redis.call('HSET', p .. 'h', key, entry)
      redis.call('ZADD', p .. 'i', 0, key)
      -- The deadline sits in the entry's bytes 9 to 16 (little endian).
      local d = 0
      for j = 16, 9, -1 do
        d = d * 256 + string.byte(entry, j)
      end
      if d > 0 then
        redis.call('ZADD', p .. 'd', int(d), key)
      else
        redis.call('ZREM', p .. 'd', key)
      end
      add_event(p, history, ver, {'t', 's', 'k', key, 'e', entry})
    elseif kind == 'c' then
      redis.call('UNLINK', p .. 'h', p .. 'i', p .. 'd')
      add_event(p, history, ver, {'t', 'c', 'k', ''})
    else
      remove_key(p, key)
      add_event(p, history, ver, {'t', kind, 'k', key})
    end
  end
  redis.call('HSET', keys[1], 'v', int(last), 'inc', int(inc), 'k', args[4], 'b', args[5])
  return {'ok'}
end

-- Expires up to ARGV[1] due keys, each a change with its own version and
-- event. ARGV[2] = history length.
-- {expired, next deadline or -1}
local function expire(keys, args)
  local p = prefix(keys[1])
  local now = now_ms()
  local due = redis.call('ZRANGEBYSCORE', p .. 'd', '-inf', int(now), 'LIMIT', 0, tonumber(args[1]))
  local v, inc, k, b = counters(keys[1])
  local history = tonumber(args[2])
  for _, key in ipairs(due) do
    local entry = redis.call('HGET', p .. 'h', key)
    if entry then
      k = k - 1
      b = b - (#key + #entry - 16)
    end
    remove_key(p, key)
    v = v + 1
    add_event(p, history, v, {'t', 'e', 'k', key})
  end
  if #due > 0 then
    redis.call('HSET', keys[1], 'v', int(v), 'inc', int(inc), 'k', int(math.max(k, 0)), 'b', int(math.max(b, 0)))
  end
  local first = redis.call('ZRANGE', p .. 'd', 0, 0, 'WITHSCORES')
  local next = -1
  if #first > 0 then
    next = tonumber(first[2])
  end
  return {#due, next}
end

-- Where a watch starts: {inc, v, oldest version held in the stream or 0}.
local function watch_start(keys, args)
  local p = prefix(keys[1])
  local v, inc = counters(keys[1])
  local first = redis.call('XRANGE', p .. 's', '-', '+', 'COUNT', 1)
  local oldest = 0
  if #first > 0 then
    oldest = tonumber(string.match(first[1][1], '^(%d+)-'))
  end
  return {inc, v, oldest}
end

-- Deletes the project: its data goes (UNLINK frees big structures off the
-- main thread), the name starts a new incarnation numbered after every
-- version it used and at least at the deletion time.
-- {live keys removed, new incarnation}
local function drop(keys, args)
  local p = prefix(keys[1])
  local now = now_ms()
  local v, inc = counters(keys[1])
  local removed = live_count(p, now)
  local next = math.max(math.max(v, inc) + 1, now)
  redis.call('UNLINK', p .. 'h', p .. 'i', p .. 'd', p .. 's')
  redis.call('HSET', keys[1], 'v', int(next), 'inc', int(next), 'k', 0, 'b', 0)
  return {removed, next}
end

-- Due-project index maintenance (a bucket of projects by earliest
-- deadline): moves project ARGV[1] from score ARGV[2] to ARGV[3] (-1:
-- remove) only if no writer changed its score meanwhile.
local function settle(keys, args)
  local score = redis.call('ZSCORE', keys[1], args[1])
  if score and tonumber(score) == tonumber(args[2]) then
    if tonumber(args[3]) < 0 then
      redis.call('ZREM', keys[1], args[1])
    else
      redis.call('ZADD', keys[1], args[3], args[1])
    end
    return 1
  end
  return 0
end

redis.register_function{function_name = 'kv_version', callback = version, flags = {'no-writes'}}
redis.register_function{function_name = 'kv_get', callback = get, flags = {'no-writes'}}
redis.register_function{function_name = 'kv_list', callback = list, flags = {'no-writes'}}
redis.register_function{function_name = 'kv_snapshot', callback = snapshot, flags = {'no-writes'}}
redis.register_function{function_name = 'kv_watch_start', callback = watch_start, flags = {'no-writes'}}
redis.register_function{function_name = 'kv_apply', callback = apply}
redis.register_function{function_name = 'kv_expire', callback = expire}
redis.register_function{function_name = 'kv_drop', callback = drop}
redis.register_function{function_name = 'kv_settle', callback = settle}
