-- GET a page after a random real checkpoint id, so the server cannot serve one cached position.
-- Environment: CKPT_BENCH_PATH (the list path), CKPT_BENCH_CURSORS (a file of checkpoint ids, one a
-- line), CKPT_BENCH_KEY (the API key), CKPT_BENCH_LIMIT (page size, default 20).
local path = os.getenv("CKPT_BENCH_PATH")
local limit = os.getenv("CKPT_BENCH_LIMIT") or "20"
local ids = {}
for line in io.lines(os.getenv("CKPT_BENCH_CURSORS")) do
  ids[#ids + 1] = line
end
wrk.headers["Authorization"] = "Bearer " .. os.getenv("CKPT_BENCH_KEY")

local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

function init(args)
  -- Each thread has its own Lua state: seed them differently.
  math.randomseed(os.time() * 1000 + (thread_number or 0))
end

function request()
  return wrk.format("GET", path .. "?limit=" .. limit .. "&after=" .. ids[math.random(#ids)])
end
