#!lua name=kv
-- The kv function library: every read and write of one project runs as
-- one of these functions on the master of the project's hash slot, so a
-- transaction is atomic without locks or MULTI.
--
-- Keys of project P all carry the hash tag {P} (one slot, one shard):
--   kv:{P}:m        hash: v (newest version), inc (incarnation),
--                   k (keys held), b (bytes held: keys plus values),
--                   cv (newest version known to be on the replicas)
--   kv:{P}:h        hash: key -> entry (8-byte LE version, 8-byte LE
--                   deadline in unix ms or 0, then the encoded value)
--   kv:{P}:i        sorted set, all scores 0: the keys in byte order
--   kv:{P}:d        sorted set: key -> deadline (keys with a TTL)
--   kv:{P}:s        stream: one entry per change, ID = version-0
--   kv:{P}:r:ID     string: outcome of request id ID (8-byte LE
--                   incarnation, 8-byte fingerprint, outcome); one of an
--                   earlier incarnation is ignored
--   kv:{P}:w:W      string: outcome of write W (a front-end's random id),
--                   for 30 s: long enough for any resend of the call
--
-- Every key a function touches is declared (KEYS), so while a slot
-- migrates the cluster answers ASK or TRYAGAIN instead of letting a
-- function see half a project. The data functions get
-- KEYS = m, h, i, d, s (then the request and write keys they use).
--
-- The catalog (projects, quotas, tokens) of a deployment lives in one slot:
--   kv:{#catalog}:p  hash: project -> "generation|max keys|max bytes"
--   kv:{#catalog}:t  hash: token id -> token record (project name length,
--                    name, read-only flag, SHA-256 of the secret, creation
--                    time, then the token's rate limits if it has any; only
--                    the head is read here): never the secret
--   kv:{#catalog}:s  stream: every catalog change, which every front-end
--                    follows to keep its copy current
-- (No project name holds `#`, so these never meet a project's keys.)
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

local function counters(meta)
  local m = redis.call('HMGET', meta, 'v', 'inc', 'k', 'b')
  return tonumber(m[1] or 0) or 0, tonumber(m[2] or 0) or 0,
         tonumber(m[3] or 0) or 0, tonumber(m[4] or 0) or 0
end

local M, H, I, D, S = 1, 2, 3, 4, 5

-- Live keys: every key minus the ones whose deadline has come.
local function live_count(keys, now)
  return redis.call('ZCARD', keys[I]) - redis.call('ZCOUNT', keys[D], '-inf', int(now))
end

-- The entries of ARGV[from..] as HMGET answers (false when absent).
local function entries(keys, args, from)
  if #args < from then
    return {}
  end
  return redis.call('HMGET', keys[H], unpack(args, from))
end

local function version()
  return VERSION
end

-- get / get_many / has: {now, inc, v, entry...}. The front-end compares
-- each entry's deadline with `now`, this call's reading of the server
-- clock: an expired entry is never answered.
local function get(keys, args)
  local v, inc = counters(keys[M])
  return {now_ms(), inc, v, entries(keys, args, 1)}
end

-- One page: ARGV = min, max (ZRANGEBYLEX bounds), count.
-- {now, inc, v, {key...}, {entry...}}
local function list(keys, args)
  local v, inc = counters(keys[M])
  local names = redis.call('ZRANGEBYLEX', keys[I], args[1], args[2], 'LIMIT', 0, tonumber(args[3]))
  local found = {}
  if #names > 0 then
    found = redis.call('HMGET', keys[H], unpack(names))
  end
  return {now_ms(), inc, v, names, found}
end

-- What a transaction group is evaluated against. KEYS[6..] = the request
-- keys of the group; ARGV = the keys the group touches.
-- {now, inc, v, keys held, bytes held, live keys, due keys,
--  {request record...}, {entry...}}
local function snapshot(keys, args)
  local now = now_ms()
  local v, inc, k, b = counters(keys[M])
  local records = {}
  for i = 6, #keys do
    records[i - 5] = redis.call('GET', keys[i]) or false
  end
  local due = redis.call('ZCOUNT', keys[D], '-inf', int(now))
  return {now, inc, v, k, b, live_count(keys, now), due, records, entries(keys, args, 1)}
end

local function add_event(keys, history, ver, fields)
  redis.call('XADD', keys[S], 'MAXLEN', '~', history, int(ver) .. '-0', unpack(fields))
end

local function remove_key(keys, key)
  redis.call('HDEL', keys[H], key)
  redis.call('ZREM', keys[I], key)
  redis.call('ZREM', keys[D], key)
end

-- Applies an evaluated group if the project is still as read.
-- KEYS[6..] = per write: its write key, its request key (the write key
-- again when it has no request id). ARGV = incarnation, the incarnation
-- as the 8 bytes records start with, base version, horizon (the earliest
-- deadline the evaluation relied on; 0 for none), keys held after, bytes
-- held after, history length, request-id window ms, then per write: has
-- a request id (1 or 0), outcome record; then the changes, 4 fields each:
-- kind (s, d, e, c), version, key, entry (or "").
-- {"ok"} | {"dup", {outcome...}} | {"gone", inc} | {"conflict"}
local function apply(keys, args)
  local v, inc = counters(keys[M])
  local writes = (#keys - 5) / 2
  if writes > 0 and redis.call('EXISTS', keys[6]) == 1 then
    -- A resend of a call that was applied: answer what it answered.
    local out = {}
    for i = 0, writes - 1 do
      out[i + 1] = redis.call('GET', keys[6 + 2 * i]) or ''
    end
    return {'dup', out}
  end
  if inc ~= tonumber(args[1]) then
    return {'gone', inc}
  end
  if v ~= tonumber(args[3]) then
    return {'conflict'}
  end
  local now = now_ms()
  local horizon = tonumber(args[4])
  if horizon > 0 and now >= horizon then
    return {'conflict'}
  end
  local tag = args[2]
  local history = tonumber(args[7])
  local window = tonumber(args[8])
  local at = 9
  for i = 0, writes - 1 do
    local wkey, rkey = keys[6 + 2 * i], keys[7 + 2 * i]
    local has_request, record = args[at], args[at + 1]
    at = at + 2
    if has_request == '1' then
      local old = redis.call('GET', rkey)
      if old and string.sub(old, 1, 8) == tag then
        return {'conflict'}
      end
    end
  end
  at = 9
  for i = 0, writes - 1 do
    local wkey, rkey = keys[6 + 2 * i], keys[7 + 2 * i]
    local has_request, record = args[at], args[at + 1]
    at = at + 2
    if has_request == '1' then
      redis.call('SET', rkey, record, 'PX', window)
    end
    redis.call('SET', wkey, record, 'PX', 30000)
  end
  local last = v
  while at + 3 <= #args do
    local kind, ver, key, entry = args[at], tonumber(args[at + 1]), args[at + 2], args[at + 3]
    at = at + 4
    last = ver
    if kind == 's' then
      redis.call('HSET', keys[H], key, entry)
      redis.call('ZADD', keys[I], 0, key)
      -- The deadline sits in the entry's bytes 9 to 16 (little endian).
      local d = 0
      for j = 16, 9, -1 do
        d = d * 256 + string.byte(entry, j)
      end
      if d > 0 then
        redis.call('ZADD', keys[D], int(d), key)
      else
        redis.call('ZREM', keys[D], key)
      end
      add_event(keys, history, ver, {'t', 's', 'k', key, 'e', entry})
    elseif kind == 'c' then
      redis.call('UNLINK', keys[H], keys[I], keys[D])
      add_event(keys, history, ver, {'t', 'c', 'k', ''})
    else
      remove_key(keys, key)
      add_event(keys, history, ver, {'t', kind, 'k', key})
    end
  end
  redis.call('HSET', keys[M], 'v', int(last), 'inc', int(inc), 'k', args[5], 'b', args[6])
  return {'ok'}
end

-- Expires up to ARGV[1] due keys, each a change with its own version and
-- event. ARGV[2] = history length.
-- {expired, next deadline or -1, newest version}
local function expire(keys, args)
  local now = now_ms()
  local due = redis.call('ZRANGEBYSCORE', keys[D], '-inf', int(now), 'LIMIT', 0, tonumber(args[1]))
  local v, inc, k, b = counters(keys[M])
  local history = tonumber(args[2])
  for _, key in ipairs(due) do
    local entry = redis.call('HGET', keys[H], key)
    if entry then
      k = k - 1
      b = b - (#key + #entry - 16)
    end
    remove_key(keys, key)
    v = v + 1
    add_event(keys, history, v, {'t', 'e', 'k', key})
  end
  if #due > 0 then
    redis.call('HSET', keys[M], 'v', int(v), 'inc', int(inc), 'k', int(math.max(k, 0)), 'b', int(math.max(b, 0)))
  end
  local first = redis.call('ZRANGE', keys[D], 0, 0, 'WITHSCORES')
  local next = -1
  if #first > 0 then
    next = tonumber(first[2])
  end
  return {#due, next, v}
end

-- Where a watch starts: {inc, v, oldest version held in the stream or 0}.
local function watch_start(keys, args)
  local v, inc = counters(keys[M])
  local first = redis.call('XRANGE', keys[S], '-', '+', 'COUNT', 1)
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
  local now = now_ms()
  local v, inc = counters(keys[M])
  local removed = live_count(keys, now)
  local next = math.max(math.max(v, inc) + 1, now)
  redis.call('UNLINK', keys[H], keys[I], keys[D], keys[S])
  redis.call('HSET', keys[M], 'v', int(next), 'inc', int(next), 'k', 0, 'b', 0, 'cv', int(next))
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

-- Records that the project's changes up to ARGV[1] reached the replicas
-- (a WAIT after them succeeded). Watches deliver only those, so no
-- watcher sees a change that a failover could take back.
local function confirm(keys, args)
  local version = tonumber(args[1])
  local cv = tonumber(redis.call('HGET', keys[M], 'cv') or 0) or 0
  if version > cv then
    redis.call('HSET', keys[M], 'cv', int(version))
  end
  return 1
end

-- {inc, newest version on the replicas}
local function confirmed(keys, args)
  local m = redis.call('HMGET', keys[M], 'inc', 'cv')
  return {tonumber(m[1] or 0) or 0, tonumber(m[2] or 0) or 0}
end

-- Project usage for the admin API: {inc, v, keys held, bytes held}.
local function stat(keys, args)
  local v, inc, k, b = counters(keys[M])
  return {inc, v, k, b}
end

-- The catalog functions get KEYS = projects hash, tokens hash, stream.
local P, T, CS = 1, 2, 3

local function catalog_event(keys, fields)
  redis.call('XADD', keys[CS], 'MAXLEN', '~', 10000, '*', unpack(fields))
end

-- The whole catalog and the stream position it is current to:
-- {last id, {name, record, ...}, {id, token, ...}}.
local function catalog_load(keys, args)
  local last = '0-0'
  local newest = redis.call('XREVRANGE', keys[CS], '+', '-', 'COUNT', 1)
  if #newest > 0 then
    last = newest[1][1]
  end
  return {last, redis.call('HGETALL', keys[P]), redis.call('HGETALL', keys[T])}
end

-- ARGV = name, generation, max keys, max bytes, mode ("create" refuses an
-- existing project, "quota" a missing one and keeps its generation), then
-- (since 1.1) ops per second, write bytes per second. The rates are
-- appended to the record only when one is set, so a record without them
-- reads as before ("generation|keys|bytes").
local function catalog_put_project(keys, args)
  local name, generation, mode = args[1], args[2], args[5]
  local old = redis.call('HGET', keys[P], name)
  if mode == 'create' and old then
    return {'exists'}
  end
  if mode == 'quota' then
    if not old then
      return {'missing'}
    end
    generation = string.match(old, '^([^|]*)|')
  end
  local record = generation .. '|' .. args[3] .. '|' .. args[4]
  local ops, write_bytes = args[6] or '', args[7] or ''
  if ops ~= '' or write_bytes ~= '' then
    record = record .. '|' .. ops .. '|' .. write_bytes
  end
  redis.call('HSET', keys[P], name, record)
  catalog_event(keys, {'o', 'P', 'n', name, 'r', record})
  return {'ok', record}
end

-- The token's project: its record starts with the name's length.
local function token_project(token)
  local n = string.byte(token, 1)
  return string.sub(token, 2, 1 + n)
end

-- ARGV = name, the incarnation the project's data now starts at.
-- {"ok", tokens removed} | {"missing"}
local function catalog_delete_project(keys, args)
  local name = args[1]
  if redis.call('HDEL', keys[P], name) == 0 then
    return {'missing'}
  end
  local tokens = redis.call('HGETALL', keys[T])
  local removed = 0
  for i = 1, #tokens, 2 do
    if token_project(tokens[i + 1]) == name then
      redis.call('HDEL', keys[T], tokens[i])
      removed = removed + 1
    end
  end
  catalog_event(keys, {'o', 'D', 'n', name, 'inc', args[2]})
  return {'ok', removed}
end

-- ARGV = id, token record, the project's generation the caller saw.
-- {"ok"} | {"missing"} | {"gone"}
local function catalog_put_token(keys, args)
  local project = redis.call('HGET', keys[P], token_project(args[2]))
  if not project then
    return {'missing'}
  end
  if string.match(project, '^([^|]*)|') ~= args[3] then
    return {'gone'}
  end
  redis.call('HSET', keys[T], args[1], args[2])
  catalog_event(keys, {'o', 'T', 'i', args[1], 't', args[2]})
  return {'ok'}
end

-- ARGV = id. {"ok"} | {"missing"}
local function catalog_revoke(keys, args)
  if redis.call('HDEL', keys[T], args[1]) == 0 then
    return {'missing'}
  end
  catalog_event(keys, {'o', 'R', 'i', args[1]})
  return {'ok'}
end

redis.register_function{function_name = 'kv_confirm', callback = confirm}
redis.register_function{function_name = 'kv_confirmed', callback = confirmed, flags = {'no-writes'}}
redis.register_function{function_name = 'kv_stat', callback = stat, flags = {'no-writes'}}
redis.register_function{function_name = 'kv_catalog_load', callback = catalog_load, flags = {'no-writes'}}
redis.register_function{function_name = 'kv_catalog_put_project', callback = catalog_put_project}
redis.register_function{function_name = 'kv_catalog_delete_project', callback = catalog_delete_project}
redis.register_function{function_name = 'kv_catalog_put_token', callback = catalog_put_token}
redis.register_function{function_name = 'kv_catalog_revoke', callback = catalog_revoke}
redis.register_function{function_name = 'kv_version', callback = version, flags = {'no-writes'}}
redis.register_function{function_name = 'kv_get', callback = get, flags = {'no-writes'}}
redis.register_function{function_name = 'kv_list', callback = list, flags = {'no-writes'}}
redis.register_function{function_name = 'kv_snapshot', callback = snapshot, flags = {'no-writes'}}
redis.register_function{function_name = 'kv_watch_start', callback = watch_start, flags = {'no-writes'}}
redis.register_function{function_name = 'kv_apply', callback = apply}
redis.register_function{function_name = 'kv_expire', callback = expire}
redis.register_function{function_name = 'kv_drop', callback = drop}
redis.register_function{function_name = 'kv_settle', callback = settle}
