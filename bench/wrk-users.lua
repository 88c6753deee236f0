-- wrk script of `make bench`: every request carries a different user id plus the cookie and
-- query string a browser would send, so the filters do their real work (hash a new id, parse
-- cookies and query) on every request. The requests are formatted once in init(), so wrk's own
-- cost per request stays small. done() prints one line `WRK_JSON {...}` that bench.py reads.
--
-- Arguments (after `--`): the kind of request, and the tokens file for `jwt` (the lanes file for
-- `lane`):
--   get          GET with x-user-id: user-<n> (50 000 ids)
--   chat<KB>     POST of an OpenAI-style chat body of <KB> KiB whose /user is user-<n>
--                (scripts/bench.py chat_body() makes the same bytes)
--   chatfile FILE  POST of FILE's bytes (bench/chat-4k.json), application/json, with
--                x-user-id: user-<n>
--   jwt FILE     GET with authorization: Bearer <line n of FILE> (RS256, sub user-<n>)
--   lane FILE    GET with x-user-id: user-<n> and baggage: <line n of FILE> (user-<n>'s signed
--                lane member; scripts/bench.py lane_members() writes one a line)

local requests = {}
local n = 0

local function chat(user, kb)
  local head = '{"model":"gpt-4o-mini","user":"' .. user .. '","stream":false,"messages":[{"role":"user","content":"'
  local tail = '"}]}'
  return head .. string.rep("x", kb * 1024 - #head - #tail) .. tail
end

function init(args)
  local kind = args[1] or "get"
  local base = {
    ["cookie"] = "theme=dark; session=3f9a1c; lang=en",
    ["user-agent"] = "Mozilla/5.0 (graysplit bench)",
    ["accept"] = "application/json",
  }
  local function with(extra)
    local h = {}
    for k, v in pairs(base) do h[k] = v end
    for k, v in pairs(extra) do h[k] = v end
    return h
  end
  if kind == "jwt" then
    local i = 0
    for line in io.lines(args[2]) do
      requests[i + 1] = wrk.format("GET", nil, with({["authorization"] = "Bearer " .. line}))
      i = i + 1
    end
  elseif kind == "lane" then
    local i = 0
    for line in io.lines(args[2]) do
      requests[i + 1] = wrk.format("GET", nil, with({["x-user-id"] = "user-" .. i, ["baggage"] = line}))
      i = i + 1
    end
  elseif kind == "chatfile" then
    local f = assert(io.open(args[2], "rb"))
    local body = f:read("*a")
    f:close()
    for i = 1, 5000 do
      requests[i] = wrk.format("POST", nil, with({["content-type"] = "application/json",
        ["x-user-id"] = "user-" .. (i - 1)}), body)
    end
  elseif kind:sub(1, 4) == "chat" then
    local kb = tonumber(kind:sub(5))
    for i = 1, 5000 do
      requests[i] = wrk.format("POST", nil, with({["content-type"] = "application/json"}),
        chat("user-" .. (i - 1), kb))
    end
  else
    for i = 1, 50000 do
      requests[i] = wrk.format("GET", nil, with({["x-user-id"] = "user-" .. (i - 1)}))
    end
  end
end

function request()
  n = n % #requests + 1
  return requests[n]
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
