-- wrk script for POST /api/v1/events: one purchase per request, each with its own
-- Idempotency-Key and reference. Set by the environment (see bench/api_profile.py --wrk):
--   WRK_AUTH     the Authorization header ("Bearer <jwt>" or "Api-Key <key>")
--   WRK_PROGRAM  the program id
--   WRK_MEMBERS  members to spread over (default 2000)
local auth = os.getenv("WRK_AUTH")
local program = os.getenv("WRK_PROGRAM")
local members = tonumber(os.getenv("WRK_MEMBERS") or "2000")
local counter = 0
local tag = ""

function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
  tag = string.format("%08x", math.random(0, 0x7fffffff))
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"program_id":"%s","member_id":"u%d","type":"purchase","amount":"%d","currency":"XOF",' ..
    '"module":"shop","reference":"order-%s-%d"}',
    program, math.random(0, members - 1), math.random(20, 800) * 25, tag, counter)
  local headers = {
    ["Authorization"] = auth,
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = string.format("wrk-%s-%d", tag, counter),
  }
  return wrk.format("POST", "/api/v1/events", headers, body)
end

local statuses = {}
function response(status, headers, body)
  if status ~= 201 then
    statuses[status] = (statuses[status] or 0) + 1
  end
end
