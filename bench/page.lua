-- page.lua - wrk script: every request is a GET of one page of the host site (PAGE, e.g.
-- /torrents), the way a browser asks for it; a reply counts as ok when its status is 200.
--
-- Prints the same machine-readable line as announce.lua:
--   WRK_RESULT rps=... p50_us=... p90_us=... p99_us=... max_us=... requests=... ok=... fail=...

local PAGE = assert(os.getenv("PAGE"), "PAGE (the path to ask for) is required")
local fmt = string.format

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

ok, fail = 0, 0

function request()
  return wrk.format("GET", PAGE, { ["Accept"] = "text/html" })
end

function response(status, hdrs, body)
  if status == 200 then
    ok = ok + 1
  else
    fail = fail + 1
    if fail <= 3 then io.stderr:write(fmt("bad response: status=%d body=%q\n", status, body:sub(1, 200))) end
  end
end

function done(summary, latency, requests)
  local tok, tfail = 0, 0
  for _, t in ipairs(threads) do
    tok = tok + (t:get("ok") or 0)
    tfail = tfail + (t:get("fail") or 0)
  end
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(fmt("WRK_RESULT rps=%.0f requests=%d secs=%.2f p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
               "ok=%d fail=%d avg_peers=0 err_connect=%d err_read=%d err_write=%d err_status=%d " ..
               "err_timeout=%d\n",
               summary.requests / secs, summary.requests, secs,
               latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
               tok, tfail, e.connect, e.read, e.write, e.status, e.timeout))
end
