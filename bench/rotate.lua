-- wrk script: every request carries the next credential of a list; non-2xx answers are counted.
--
--   wrk -c64 -t2 -d10s --latency -s bench/rotate.lua http://127.0.0.1:PORT/ -- FILE THREADS [HEADER]
--
-- FILE holds one value of HEADER per line: session cookies for "Cookie" (the default, e.g.
-- "sso_sidecar=..."), "Bearer <JWT>" for "Authorization" (an API client: no cookie, Accept: */*); an
-- empty file, or none, sends no credential. Each thread starts at a different place in the list, so the
-- connections cycle over all credentials together. done() prints one line "WRK_JSON {...}" for
-- bench/wrkbench.py to read.

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  prepared = {}
  local path = args[1]
  local header = args[3]
  if header == nil or header == "" then
    header = "Cookie"
  end
  -- A browser asks for HTML; an API client (curl, requests) for anything.
  local accept = header == "Cookie" and "text/html" or "*/*"
  if path ~= nil and path ~= "" then
    for line in io.lines(path) do
      if #line > 0 then
        prepared[#prepared + 1] = wrk.format("GET", wrk.path, { [header] = line, ["Accept"] = accept })
      end
    end
  end
  if #prepared == 0 then
    prepared[1] = wrk.format("GET", wrk.path, { ["Accept"] = accept })
  end
  -- Threads start spread over the list.
  local nthreads = tonumber(args[2]) or 1
  cursor = math.floor(id * #prepared / nthreads) % #prepared
  responses = 0
  non2xx = 0
end

function request()
  cursor = cursor % #prepared + 1
  return prepared[cursor]
end

function response(status, headers, body)
  responses = responses + 1
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local counted, bad = 0, 0
  for _, thread in ipairs(threads) do
    counted = counted + (thread:get("responses") or 0)
    bad = bad + (thread:get("non2xx") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"responses":%d,"non2xx":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f,"stdev":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes, counted, bad,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean, latency.stdev))
end
