-- wrk_result.lua - the one WRK_RESULT printer of announce.lua and page.lua (bench/loads.py
-- parses the line). A script registers its threads with `setup` and prints from `done`:
--
--   local result = require("wrk_result")
--   setup = result.setup
--   function done(summary, latency, requests) result.print(summary, latency) end
--
-- Each thread counts its replies in the globals ok, fail and (announces only) peers_sum.
--   WRK_RESULT rps=... p50_us=... p90_us=... p99_us=... max_us=... requests=... ok=... fail=...

local fmt = string.format
local M = { threads = {} }

function M.setup(thread)
  thread:set("tid", #M.threads + 1)
  table.insert(M.threads, thread)
end

function M.print(summary, latency)
  local tok, tfail, tpeers = 0, 0, 0
  for _, t in ipairs(M.threads) do
    tok = tok + (t:get("ok") or 0)
    tfail = tfail + (t:get("fail") or 0)
    tpeers = tpeers + (t:get("peers_sum") or 0)
  end
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(fmt("WRK_RESULT rps=%.0f requests=%d secs=%.2f p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
               "ok=%d fail=%d avg_peers=%.1f err_connect=%d err_read=%d err_write=%d err_status=%d " ..
               "err_timeout=%d\n",
               summary.requests / secs, summary.requests, secs,
               latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
               tok, tfail, tok > 0 and tpeers / tok or 0,
               e.connect, e.read, e.write, e.status, e.timeout))
end

return M
