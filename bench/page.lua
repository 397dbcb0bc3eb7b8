-- page.lua - wrk script: every request is a GET of one page of the host site (PAGE, e.g.
-- /torrents), the way a browser asks for it; a reply counts as ok when its status is 200.
--
-- Prints the same machine-readable line as announce.lua (wrk_result.lua):
--   WRK_RESULT rps=... p50_us=... p90_us=... p99_us=... max_us=... requests=... ok=... fail=...

-- wrk_result.lua sits beside this script
package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
local result = require("wrk_result")
setup = result.setup

local PAGE = assert(os.getenv("PAGE"), "PAGE (the path to ask for) is required")
local fmt = string.format

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
  result.print(summary, latency)
end
