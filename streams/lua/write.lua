-- The write script of streams/state.py: one atomic call writes one partition's part of a batch.
-- KEYS[1]: the partition's counters; every key the call touches carries the partition's hash tag
-- (segstream/keys.py), so on Redis Cluster the call runs on the node holding that one slot.
-- ARGV: the header (streams/protocol.py, WriteHeader: the names and order below are the same, a
-- test checks it), then sections, all flat strings (no decoding): (partition, watermark) *
-- watermark_count; send time (ms) * sent_count; then per write: customer; its shape, nine numbers
-- in one string: 'expected-version n-fields n-ids scored(1/0) duplicates
-- n-segment-changes n-churn-changes n-deltas n-seen'; (field name, value) * n-fields; the 8-byte
-- digest of each fresh event id * n-ids, appended after the n-seen digests the profile holds
-- (fields seen, seen1, seen2...: SEEN_CHUNK digests each, so a write rewrites at most a short
-- field, and the AOF gets a few bytes, not the customer's whole history); due
-- ('' = none); (previous, new, event-day, payload) * n-segment-changes; (previous, new, payload) *
-- n-churn-changes; (name, integer) * n-deltas, the analytics read models' changes
-- (streams/analytics.py): the name's first character is the read model's index in
-- analytics_keys, the rest the hash field.
-- The worker waits on this script more than Redis waits on the worker (a catch-up spent ~30% of
-- its time awaiting write replies), so its per-write cost counts: the numbers travel in one
-- string, read by one string.match (a gmatch loop cost 14% more), and the fields go to HSET
-- straight from ARGV, names beside values (names joined in one string and split here cost 17%
-- more, ~6 us a write; the ~6 extra arguments cost the worker ~2 us at hiredis's ~0.35 us each,
-- an estimate, not timed). Measured on 40 captured calls of a catch-up, in one sitting.
local HEADER = {
  'profile_prefix', 'transitions_prefix', 'analytics_keys', 'due', 'segments', 'churn_statuses', 'changes',
  'outbox', 'counters', 'watermarks', 'latencies', 'recent_changes', 'recent_latencies', 'segment_topic', 'churn_topic',
  'duplicates', 'ticks', 'watermark_count', 'sent_count', 'write_count',
}
local h = {}
for k, name in ipairs(HEADER) do h[name] = ARGV[k] end
local profile, transitions, due_key = h.profile_prefix, h.transitions_prefix, h.due
local segments, changes, outbox, counters, watermarks = h.segments, h.changes, h.outbox, h.counters, h.watermarks
local churn_statuses = h.churn_statuses
local analytics, nmodels = {}, 0  -- read model index (one character: '0', '1', ...) -> its hash
for key in string.gmatch(h.analytics_keys, '[^\n]+') do analytics[tostring(nmodels)] = key; nmodels = nmodels + 1 end
local latencies, recent, latency_cap = h.latencies, h.recent_changes, tonumber(h.recent_latencies)
local segment_topic, churn_topic = h.segment_topic, h.churn_topic
local duplicates, ticks = tonumber(h.duplicates), tonumber(h.ticks)
local nwatermarks, nsent, nwrites = tonumber(h.watermark_count), tonumber(h.sent_count), tonumber(h.write_count)
local watermarks_at = #HEADER + 1
local sent_at = watermarks_at + 2 * nwatermarks
local applied, consumed = 0, duplicates
local lost = {}
-- segment counts and transitions add up over the batch; change events leave in a few outbox
-- entries, each field '<n>:<topic>:<customer>' holding one event
-- (latest, kinds: the recent changes and their field in the `changes` stream, 'change' or 'churn')
local counts, churn_counts, moves, out, latest, kinds = {}, {}, {}, {}, {}, {}
local sums = {}  -- analytics: hash -> field -> change
local function flush_outbox()
  if #out > 0 then redis.call('XADD', outbox, '*', unpack(out)); out = {} end
end
local function to_outbox(topic, customer, payload)
  out[#out + 1] = (#out / 2) .. ':' .. topic .. ':' .. customer
  out[#out + 1] = payload
  if #out >= 2000 then flush_outbox() end
end
local SEEN_CHUNK = 16  -- streams/state.py reads every field named seen*
local i = sent_at + nsent
for write = 1, nwrites do
  local customer = ARGV[i]
  local expected, nfields, nids, scored, dups, nsegment, nchurn, ndeltas, nseen =
    string.match(ARGV[i + 1], '^(%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+) (%d+)$')
  expected, nfields, nids, scored = tonumber(expected), tonumber(nfields), tonumber(nids), tonumber(scored)
  dups, nsegment, nchurn, ndeltas = tonumber(dups), tonumber(nsegment), tonumber(nchurn), tonumber(ndeltas)
  local pkey = profile .. customer
  local fields_at = i + 2
  local ids_at = fields_at + 2 * nfields
  local due = ARGV[ids_at + nids]
  local segment_at = ids_at + nids + 1
  local churn_at = segment_at + 4 * nsegment
  local deltas_at = churn_at + 3 * nchurn
  i = deltas_at + 2 * ndeltas
  -- compare-and-set: the version the worker read (or last wrote) is still there, so is the 'seen'
  -- it checked the fresh events against: no event is applied twice without another check here
  if tonumber(redis.call('HGET', pkey, 'version') or '0') ~= expected then
    lost[#lost + 1] = write
  else
    redis.call('HSET', pkey, unpack(ARGV, fields_at, ids_at - 1))
    local chunk, filled, k = math.floor(tonumber(nseen) / SEEN_CHUNK), tonumber(nseen) % SEEN_CHUNK, ids_at
    while k < ids_at + nids do
      local take = math.min(SEEN_CHUNK - filled, ids_at + nids - k)
      local field = chunk == 0 and 'seen' or ('seen' .. chunk)
      local have = filled > 0 and (redis.call('HGET', pkey, field) or '') or ''
      redis.call('HSET', pkey, field, have .. table.concat(ARGV, '', k, k + take - 1))
      k, chunk, filled = k + take, chunk + 1, 0
    end
    -- every scored customer stays in the due index (+inf: time alone changes nothing), so a rescore finds them
    if due ~= '' then redis.call('ZADD', due_key, due, customer)
    elseif scored == 1 then redis.call('ZADD', due_key, '+inf', customer)
    else redis.call('ZREM', due_key, customer) end
    for k = segment_at, segment_at + 4 * (nsegment - 1), 4 do
      local previous, new, payload = ARGV[k], ARGV[k + 1], ARGV[k + 3]
      if previous ~= '' then counts[previous] = (counts[previous] or 0) - 1 end
      if new ~= '' then counts[new] = (counts[new] or 0) + 1 end
      local day = transitions .. ARGV[k + 2]
      moves[day] = moves[day] or {}
      moves[day][previous .. '>' .. new] = (moves[day][previous .. '>' .. new] or 0) + 1
      latest[#latest + 1] = payload
      kinds[#latest] = 'change'
      to_outbox(segment_topic, customer, payload)
    end
    for k = churn_at, churn_at + 3 * (nchurn - 1), 3 do
      local previous, new, payload = ARGV[k], ARGV[k + 1], ARGV[k + 2]
      if previous ~= '' then churn_counts[previous] = (churn_counts[previous] or 0) - 1 end
      if new ~= '' then churn_counts[new] = (churn_counts[new] or 0) + 1 end
      to_outbox(churn_topic, customer, payload)
      latest[#latest + 1] = payload
      kinds[#latest] = 'churn'
    end
    for k = deltas_at, deltas_at + 2 * (ndeltas - 1), 2 do
      local name = ARGV[k]
      local key = analytics[string.sub(name, 1, 1)]
      local field = string.sub(name, 2)
      sums[key] = sums[key] or {}
      sums[key][field] = (sums[key][field] or 0) + tonumber(ARGV[k + 1])
    end
    applied = applied + nids
    consumed = consumed + nids + dups
    duplicates = duplicates + dups
  end
end
flush_outbox()
-- the capped stream of recent changes only ever keeps the last `recent` of them
for k = math.max(1, #latest - tonumber(recent) + 1), #latest do
  redis.call('XADD', changes, 'MAXLEN', '~', recent, '*', kinds[k], latest[k])
end
for name, delta in pairs(counts) do
  if delta ~= 0 then redis.call('HINCRBY', segments, name, delta) end
end
for name, delta in pairs(churn_counts) do
  if delta ~= 0 then redis.call('HINCRBY', churn_statuses, name, delta) end
end
for day, fields in pairs(moves) do
  for field, n in pairs(fields) do redis.call('HINCRBY', day, field, n) end
end
-- a count back at zero leaves its hash: a customer who moved cohort or state leaves nothing behind
for key, fields in pairs(sums) do
  for field, n in pairs(fields) do
    if n ~= 0 and redis.call('HINCRBY', key, field, n) == 0 then redis.call('HDEL', key, field) end
  end
end
-- counted with the writes, so consumed = applied + duplicates + dead_lettered survives any crash
if consumed > 0 then redis.call('HINCRBY', counters, 'consumed', consumed) end
if applied > 0 then redis.call('HINCRBY', counters, 'applied', applied) end
if duplicates > 0 then redis.call('HINCRBY', counters, 'duplicates', duplicates) end
if ticks > 0 then redis.call('HINCRBY', counters, 'ticks', ticks) end
-- a watermark never goes back (a worker catching up again from the start of a topic reads old ticks)
for k = watermarks_at, watermarks_at + 2 * nwatermarks - 1, 2 do
  local stored = tonumber(redis.call('HGET', watermarks, ARGV[k]) or '-inf')
  if tonumber(ARGV[k + 1]) > stored then redis.call('HSET', watermarks, ARGV[k], ARGV[k + 1]) end
end
-- latency from each event's send time to this update (the server's clock, once all is written)
if nsent > 0 then
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + tonumber(now[2]) / 1000
  local samples = {}
  for k = sent_at, sent_at + nsent - 1 do
    samples[#samples + 1] = string.format('%.1f', now_ms - tonumber(ARGV[k]))
    if #samples == 1000 then redis.call('LPUSH', latencies, unpack(samples)); samples = {} end
  end
  if #samples > 0 then redis.call('LPUSH', latencies, unpack(samples)) end
  redis.call('LTRIM', latencies, 0, latency_cap - 1)
end
return lost
