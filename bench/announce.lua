-- announce.lua - wrk script: every request is a realistic BitTorrent HTTP announce.
--
-- The workload model is shared with udp_load.c, so HTTP and UDP announce the same peers:
--   POOL     file of info_hashes, 40 hex chars per line (required; also opentracker's whitelist)
--   CLIENTS  simulated clients (default 5000). Client c has peer_id "-BM0001-" + 12 bytes
--            derived from c, and port 1025 + c % 60000 (the same derivation as udp_load.c).
--   TPC      torrents per client (default 20): client c is in pool[(c*TPC + j) % K], j < TPC,
--            so the tracker converges to CLIENTS*TPC peers and stops growing.
--   NUMWANT  numwant (default 50)        SEED_PCT  share of (client, torrent) pairs with left=0
--   CLOSE    1 = send "Connection: close" (a new TCP connection per announce)
--   PREFILL  1 = announce every (client, torrent) pair once, in order, then stop the thread
--            (run with one wrk thread); the tracker is then full before anything is measured
--   VALIDATE 1 (default) = check every body: a bencoded dict with interval and peers, no failure
--   NEW_PEERS 1 = every announce is from a peer new to the tracker (a random peer_id): a change
--            every reader sees, where the default's re-announces of known peers only refresh
--
-- Prints one machine-readable line at the end:
--   WRK_RESULT rps=... p50_us=... p90_us=... p99_us=... max_us=... requests=... ok=... fail=...

local CLIENTS  = tonumber(os.getenv("CLIENTS") or "5000")
local TPC      = tonumber(os.getenv("TPC") or "20")
local NUMWANT  = tonumber(os.getenv("NUMWANT") or "50")
local SEED_PCT = tonumber(os.getenv("SEED_PCT") or "20")
local CLOSE    = (os.getenv("CLOSE") or "0") == "1"
local PREFILL  = (os.getenv("PREFILL") or "0") == "1"
local VALIDATE = (os.getenv("VALIDATE") or "1") ~= "0"
local NEW_PEERS = (os.getenv("NEW_PEERS") or "0") == "1"
local POOL     = assert(os.getenv("POOL"), "POOL (a file of hex info_hashes) is required")

-- wrk_result.lua sits beside this script
package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
local result = require("wrk_result")
setup = result.setup

local char, byte, fmt, random, floor = string.char, string.byte, string.format, math.random, math.floor

-- percent-encode raw bytes the way clients do (unreserved characters kept)
local enc_tab = {}
for i = 0, 255 do
  local c = char(i)
  enc_tab[i] = c:match("[A-Za-z0-9%.%-_~]") and c or fmt("%%%02X", i)
end
local function urlenc(raw)
  local t = {}
  for i = 1, #raw do t[i] = enc_tab[byte(raw, i)] end
  return table.concat(t)
end

local pool, clients, headers = {}, {}, {}
local pairs_total, next_pair = 0, 0
ok, fail, peers_sum = 0, 0, 0

function init(args)
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919 + floor(os.clock() * 1e6))
  for line in io.lines(POOL) do
    if #line >= 40 then
      pool[#pool + 1] = urlenc(line:sub(1, 40):gsub("..", function(h) return char(tonumber(h, 16)) end))
    end
  end
  -- must match udp_load.c: x = (c+1)*2654435761 mod 2^32; 12 times x = x*69069+1, byte = x >> 24
  for c = 0, CLIENTS - 1 do
    local x = ((c + 1) * 2654435761) % 4294967296
    local t = {}
    for j = 1, 12 do
      x = (x * 69069 + 1) % 4294967296
      t[j] = char(floor(x / 16777216))
    end
    clients[c] = { pid = urlenc("-BM0001-" .. table.concat(t)), port = 1025 + c % 60000 }
  end
  if CLOSE then headers["Connection"] = "close" end
  pairs_total = CLIENTS * TPC
end

function request()
  local ci, t
  if PREFILL then
    -- pair i: client i % CLIENTS, its (i // CLIENTS)-th torrent
    local i = next_pair % pairs_total
    next_pair = next_pair + 1
    ci = i % CLIENTS
    t = (ci * TPC + floor(i / CLIENTS)) % #pool
  else
    ci = random(0, CLIENTS - 1)
    t = (ci * TPC + random(0, TPC - 1)) % #pool
  end
  local c = clients[ci]
  local pid = c.pid
  if NEW_PEERS then
    local t = {}
    for j = 1, 12 do t[j] = char(random(0, 255)) end
    pid = urlenc("-BMNEW1-" .. table.concat(t))
  end
  -- same seeder rule as udp_load.c: left=0 for SEED_PCT% of (client, torrent) pairs
  local left = ((ci * 7 + t * 13) % 100 < SEED_PCT) and 0 or random(1, 1073741824)
  local path = "/announce?info_hash=" .. pool[t + 1] .. "&peer_id=" .. pid ..
               "&port=" .. c.port .. "&uploaded=0&downloaded=0&left=" .. left ..
               "&compact=1&numwant=" .. NUMWANT
  return wrk.format("GET", path, headers)
end

function response(status, hdrs, body)
  if not VALIDATE then
    ok = ok + 1
  elseif status == 200 and body:sub(1, 1) == "d" and body:find("8:interval", 1, true)
     and body:find("5:peers", 1, true) and not body:find("failure reason", 1, true) then
    ok = ok + 1
    local n = body:match("5:peers(%d+):")
    if n then peers_sum = peers_sum + tonumber(n) / 6 end
  else
    fail = fail + 1
    if fail <= 3 then io.stderr:write(fmt("bad response: status=%d body=%q\n", status, body:sub(1, 200))) end
  end
  if PREFILL and ok + fail == pairs_total then
    -- wrk waits out its duration even when every thread has stopped: the runner
    -- interrupts it (SIGINT, which still prints the results) when it reads this line
    io.stdout:write("PREFILL_DONE\n")
    io.stdout:flush()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  result.print(summary, latency)
end
