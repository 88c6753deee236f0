-- wrk script of `make bench`: every request carries a different user id (x-user-id: user-<n>,
-- cycling through USERS ids) plus the cookie and query string a browser would send, so the
-- filters do their real work (hash a new id, parse cookies and query) on every request.
-- The requests are formatted once in init(), so wrk's own cost per request stays small.
-- done() prints one line `WRK_JSON {...}` that scripts/bench.py reads.

local USERS = 50000
local requests = {}
local n = 0

function init(args)
  for i = 1, USERS do
    requests[i] = wrk.format("GET", nil, {
      ["x-user-id"] = "user-" .. (i - 1),
      ["cookie"] = "theme=dark; session=3f9a1c; lang=en",
      ["user-agent"] = "Mozilla/5.0 (graysplit bench)",
      ["accept"] = "application/json",
    })
  end
end

function request()
  n = n % USERS + 1
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
