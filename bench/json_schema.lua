-- json_schema evaluations per second on ~1 KB outputs, one core, through the
-- engine's runtime (the sandbox module: same VM, same JSON crossing, a
-- coroutine per evaluation). Baseline in the same run: json_valid on the
-- same outputs (decoding only), so the ratio shows what validation costs.
--   lua5.4 bench/json_schema.lua [N]   (make bench-schema: with the engine's allocator)
package.cpath = (os.getenv("RATCHET_LUA_CPATH") or "build/lua") .. "/?.so;" .. package.cpath
local sb = require "ratchet_sandbox"
local cjson = require "cjson"
local N = tonumber(arg[1]) or 50000

local schema = {
  type = "object", required = { "invoice_id", "customer", "lines", "total", "currency" },
  additionalProperties = false,
  properties = {
    invoice_id = { type = "string", pattern = "^INV-[0-9]{6}$" },
    customer = { type = "object", required = { "name", "email" },
      properties = { name = { type = "string", minLength = 1, maxLength = 200 },
        email = { type = "string", pattern = "^[^@]+@[^@]+$" } } },
    lines = { type = "array", minItems = 1, maxItems = 100, items = { ["$ref"] = "#/$defs/line" } },
    total = { type = "number", minimum = 0 },
    currency = { enum = { "EUR", "USD", "GBP" } },
    notes = { type = "string", maxLength = 500 },
  },
  ["$defs"] = { line = { type = "object", required = { "sku", "qty", "price" },
    properties = { sku = { type = "string" }, qty = { type = "integer", minimum = 1 },
      price = { type = "number", exclusiveMinimum = 0 } } } },
}
local lines = {}
for i = 1, 10 do lines[i] = { sku = "SKU-" .. i, qty = i, price = 9.99 + i } end
local output = cjson.encode({ invoice_id = "INV-000123", currency = "EUR", total = 1234.5,
  customer = { name = "Ada Lovelace", email = "ada@example.com" }, lines = lines,
  notes = string.rep("n", 200) })
local case = cjson.encode({ output = output })
local opts = cjson.encode({ schema = schema })

local function run(ev, o)
  assert(ev:evaluate(case, o).pass)
  local t0 = os.clock()
  for _ = 1, N do ev:evaluate(case, o) end
  return N / (os.clock() - t0)
end

local js = assert(sb.load_evaluator("evaluators/json_schema.lua", { dirs = { "evaluators" } }))
local jv = assert(sb.load_evaluator("evaluators/json_valid.lua", { dirs = { "evaluators" } }))
local base = run(jv, "{}")
local rate = run(js, opts)
print(string.format("output %d bytes, %d evaluations each", #output, N))
print(string.format("json_valid (baseline): %8.0f evals/s", base))
print(string.format("json_schema:           %8.0f evals/s  (%.2f x baseline; target >= 50000/s)", rate, rate / base))
