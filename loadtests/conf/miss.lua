-- wrk script for the all-miss scenario: every request asks for a path never asked before
-- (/miss/<run>-<thread>-<n>), so a cache in front of the origin must fetch and store each one.
-- RUN_ID (env) keeps repeated runs against the same cache from hitting earlier entries.
local threads = {}
local run = os.getenv("RUN_ID") or tostring(os.time())

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  prefix = "/miss/" .. run .. "-" .. tostring(tid) .. "-"
  n = 0
end

function request()
  n = n + 1
  return wrk.format("GET", prefix .. n)
end
