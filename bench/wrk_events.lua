-- wrk script for bench/api.py: unique purchases, each with its own Idempotency-Key.
-- wrk -s bench/wrk_events.lua URL -- PATH TOKEN PROGRAM_IDS MEMBERS BATCH_SIZE RUN_ID
-- BATCH_SIZE 0 sends one event per request to PATH, otherwise {"events": [...]} of that size.
-- At the end it prints one line: WRK {json} with events created, statuses and latencies.

local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  path, token, members, batch_size, run_id = args[1], args[2], tonumber(args[4]), tonumber(args[5]), args[6]
  programs = {}
  for id in string.gmatch(args[3], "[^,]+") do table.insert(programs, id) end
  counter, created, ok_requests, other, client_errors, server_errors = 0, 0, 0, 0, 0, 0
  -- The run id (hex, one per wrk process) in the seed: two wrk processes started in the same
  -- second (bench/api_pair.py's two sides) would otherwise draw the same members in the same
  -- order, and every request of one side wait for the other's lock on that member's row.
  math.randomseed(tid * 7919 + os.time() + tonumber(string.sub(run_id, 1, 7), 16))
end

local modules = { "eats", "shop", "rides" }

local function purchase(program_id, key)
  counter = counter + 1
  local ref = string.format("order-%s-%d-%d", run_id, tid, counter)
  local fields = string.format(
    '{"program_id":"%s","member_id":"u%d","type":"purchase","amount":"%d","currency":"XOF","module":"%s","reference":"%s"',
    program_id, math.random(0, members - 1), 500 + 25 * math.random(0, 780), modules[math.random(1, 3)], ref)
  if key then fields = fields .. ',"idempotency_key":"' .. key .. '"' end
  return fields .. "}"
end

function request()
  local program_id = programs[math.random(1, #programs)]
  local body
  if batch_size == 0 then
    body = purchase(program_id, nil)
  else
    local items = {}
    for i = 1, batch_size do
      items[i] = purchase(program_id, string.format("bench-%s-%d-%d", run_id, tid, counter + 1))
    end
    body = '{"events":[' .. table.concat(items, ",") .. "]}"
  end
  local headers = {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = string.format("req-%s-%d-%d", run_id, tid, counter),
  }
  return wrk.format("POST", path, headers, body)
end

function response(status, headers, body)
  if status >= 500 then server_errors = server_errors + 1 elseif status >= 400 then client_errors = client_errors + 1 end
  if batch_size == 0 then
    if status == 201 then created = created + 1; ok_requests = ok_requests + 1 else other = other + 1 end
  elseif status == 200 then
    ok_requests = ok_requests + 1
    -- Counted with plain finds: gsub built a copy of the ~700 kB answer per batch.
    local at = string.find(body, '"status":201', 1, true)
    while at do
      created = created + 1
      at = string.find(body, '"status":201', at + 12, true)
    end
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local c, okr, o, e4, e5 = 0, 0, 0, 0, 0
  for _, t in ipairs(threads) do
    c = c + t:get("created"); okr = okr + t:get("ok_requests"); o = o + t:get("other")
    e4 = e4 + t:get("client_errors"); e5 = e5 + t:get("server_errors")
  end
  io.write(string.format(
    'WRK {"events": %d, "ok_requests": %d, "other_requests": %d, "4xx": %d, "5xx": %d, "requests": %d, "errors": %d, ' ..
    '"duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    c, okr, o, e4, e5, summary.requests, summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.status + summary.errors.timeout, summary.duration, latency:percentile(50),
    latency:percentile(99), latency.max))
end
