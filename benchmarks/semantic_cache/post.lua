-- One fixed chat call; BENCH_TEMPERATURE=0 makes it cacheable (every call after the first is a hit).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "sk-bench")
local model = os.getenv("BENCH_MODEL") or "mock-json"
local stream = os.getenv("BENCH_STREAM") or "false"
local temperature = os.getenv("BENCH_TEMPERATURE") or "0"
wrk.body = '{"model":"' .. model .. '","stream":' .. stream .. ',"temperature":' .. temperature .. ',"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write one sentence about gateways."}]}'
