-- Every shipped evaluator declares its options completely (type and
-- description for each, defaults that fit), and the declaration is what
-- checks a config's options: the engine runs the same check when the config
-- or the evaluator loads (spec/engine/validation_spec.lua), the sandbox's
-- ev:check_options here. Each evaluator: options that pass, and mistakes
-- with the message they get.
local sandbox = require "spec.helpers.sandbox"

local SCHEMA = { type = "object", required = { "a" } }

-- name -> { good = { options that pass, ... }, bad = { { options, message part }, ... } }
local cases = {
  contains = {
    good = { { value = "x" }, { value = { "a", "b" }, mode = "any", case_sensitive = false } },
    bad = {
      { { valeu = "x" }, "unknown option 'valeu'; did you mean 'value'? (known: " },
      { { valeu = "x" }, "option 'value' is required" },
      { { value = "x", mode = "some" }, "option 'mode' must be one of \"all\", \"any\" (got \"some\")" },
      { { value = 3 }, "option 'value' must be a string or a list (got a number)" },
      { { value = { "a", 2 } }, "option 'value': item 2 must be a string (got a number)" },
      { { value = "" }, "option 'value' must not be an empty string" },
      { { value = "x", case_sensitive = "no" }, "option 'case_sensitive' must be true or false (got a string)" },
    },
  },
  not_contains = {
    good = { { value = "x" }, { value = { "a" }, case_sensitive = false } },
    bad = {
      { { value = "x", mode = "any" }, "unknown option 'mode'" },
      { {}, "option 'value' is required" },
    },
  },
  equals = {
    good = { {}, { trim = false, case_sensitive = false, collapse_whitespace = true, json = true } },
    bad = {
      { { jsno = true }, "unknown option 'jsno'; did you mean 'json'?" },
      { { trim = 1 }, "option 'trim' must be true or false (got a number)" },
    },
  },
  feedback = {
    good = { {}, { min_score = 0.8, retries = false } },
    bad = {
      { { min_score = 1.5 }, "option 'min_score' must be at most 1 (got 1.5)" },
      { { retrys = false }, "unknown option 'retrys'; did you mean 'retries'?" },
    },
  },
  http_check = {
    good = { { base_url = "https://x.test/api" },
             { base_url = "https://x.test", field = "call", expect_status = { 200, 201 }, body_contains = "ok",
               body_schema = SCHEMA, methods = { "GET" }, headers = { Authorization = "t" }, timeout_ms = 500 } },
    bad = {
      { {}, "option 'base_url' is required" },
      { { base_url = "https://x.test", expect_status = 42 }, "option 'expect_status' must be at least 100 (got 42)" },
      { { base_url = "https://x.test", headers = { X = 1 } }, "option 'headers': the value of 'X' must be a string" },
      { { base_url = "https://x.test", methods = { "FETCH" } }, "'FETCH' is not an HTTP method" },
      { { base_url = "https://x.test", body_schema = { ["$ref"] = "#/nowhere" } }, "$ref '#/nowhere' points at nothing" },
      { { base_url = "https://x.test", timeout_ms = 1.5 }, "option 'timeout_ms' must be an integer (got 1.5)" },
    },
  },
  json_schema = {
    good = { { schema = SCHEMA }, { schema = true, field = "x" } },
    bad = {
      { {}, "option 'schema' is required" },
      { { schema = "object" }, "option 'schema' must be true or false or a table of named values (got a string)" },
      { { schema = { pattern = "(" } }, "pattern /(/ does not compile" },
      { { schema = SCHEMA, fields = "x" }, "did you mean 'field'?" },
    },
  },
  json_valid = {
    good = { {}, { object = true } },
    bad = { { { object = "yes" }, "option 'object' must be true or false (got a string)" } },
  },
  label = {
    good = { {}, { field = "category", case_sensitive = true, allowed = { "a", "b" } } },
    bad = {
      { { allowed = "a" }, "option 'allowed' must be a list (got a string)" },
      { { feild = "x" }, "did you mean 'field'?" },
    },
  },
  llm_judge = {
    good = { { rubric = "polite" },
             { rubric = "polite", provider = "p", model = "m", threshold = 0.7, include_input = false, max_tokens = 50 } },
    bad = {
      { {}, "option 'rubric' is required" },
      { { rubric = "x", threshold = 2 }, "option 'threshold' must be at most 1 (got 2)" },
      { { rubric = "x", max_tokens = 0 }, "option 'max_tokens' must be at least 1 (got 0)" },
      { { rubirc = "x" }, "did you mean 'rubric'?" },
    },
  },
  max_latency = {
    good = { { max_ms = 3000 }, { max_ms = 0.5 } },
    bad = {
      { {}, "option 'max_ms' is required" },
      { { max_ms = 0 }, "option 'max_ms' must be more than 0 (got 0)" },
      { { max_ms = "3s" }, "option 'max_ms' must be a number (got a string)" },
    },
  },
  max_length = {
    good = { { max_chars = 10 } },
    bad = {
      { { max_chars = 0 }, "option 'max_chars' must be at least 1 (got 0)" },
      { { max_chars = 2.5 }, "option 'max_chars' must be an integer (got 2.5)" },
    },
  },
  max_tokens = {
    good = { { max_output_tokens = 10 }, { max_input_tokens = 1, max_total_tokens = 5 } },
    bad = {
      { {}, "give at least one of max_output_tokens, max_input_tokens, max_total_tokens" },
      { { max_output_token = 10 }, "did you mean 'max_output_tokens'?" },
    },
  },
  numeric = {
    good = { {}, { field = "n", abs_tolerance = 0.5, rel_tolerance = 0.01 } },
    bad = { { { abs_tolerance = -1 }, "option 'abs_tolerance' must be at least 0 (got -1)" } },
  },
  regex = {
    good = { { pattern = "^a" }, { pattern = "a.b", flags = "is", must_match = false } },
    bad = {
      { {}, "option 'pattern' is required" },
      { { pattern = "(" }, "option 'pattern' does not compile" },
      { { pattern = "x", flags = "z" }, "option 'flags' may hold only the letters i, m, s, x" },
    },
  },
  tool_call = {
    good = { { tools = { lookup = SCHEMA, any = true } }, { tools = {}, required = true, max_calls = 2 } },
    bad = {
      { {}, "option 'tools' is required" },
      { { tools = { a = 3 } }, "option 'tools': the value of 'a' must be" },
      { { tools = { a = { ["$ref"] = "#/x" } } }, "option 'tools': the schema of 'a': json_schema: $ref '#/x' points at nothing" },
    },
  },
}

local function shipped()
  local names = {}
  local p = io.popen("ls evaluators/*.lua")
  for f in p:lines() do names[#names + 1] = f:match("evaluators/(.-)%.lua$") end
  p:close()
  table.sort(names)
  return names
end

describe("shipped evaluators' option declarations", function()
  it("cover every shipped evaluator", function()
    for _, name in ipairs(shipped()) do
      assert.truthy(cases[name], "no declaration cases for evaluators/" .. name .. ".lua")
    end
  end)

  for _, name in ipairs(shipped()) do
    describe(name, function()
      local ev = sandbox.evaluator(name)

      it("declares each option with a type and a description", function()
        assert.is_table(ev.options, name .. " has no options declaration")
        for opt, d in pairs(ev.options) do
          assert.is_table(d, name .. "." .. opt .. " is not a declaration table")
          assert.truthy(d.type, name .. "." .. opt .. " has no type")
          assert.is_string(d.description, name .. "." .. opt .. " has no description")
          assert.is_true(#d.description > 5)
          assert.is_false(d.required == true and d.default ~= nil, name .. "." .. opt .. ": required with a default")
        end
      end)

      it("accepts well-formed options", function()
        for _, good in ipairs((cases[name] or {}).good or {}) do
          local ok, problems = ev:check_options(good)
          assert.is_true(ok, name .. ": " .. table.concat(problems or {}, "; "))
        end
      end)

      it("rejects mistakes with a message naming the option", function()
        for _, bad in ipairs((cases[name] or {}).bad or {}) do
          local ok, problems = ev:check_options(bad[1])
          assert.is_false(ok, name .. ": expected a problem containing: " .. bad[2])
          local all = table.concat(problems, "\n")
          assert.truthy(all:find(bad[2], 1, true), name .. ": expected '" .. bad[2] .. "' in:\n" .. all)
        end
      end)

      it("answers an evaluation with bad options as an error naming the option, not a verdict", function()
        local bad = ((cases[name] or {}).bad or {})[1]
        if not bad then return end
        local r = ev:evaluate({ output = "x", expected = "x" }, bad[1])
        assert.equal("error", r.status)
        assert.truthy(r.reason:find(bad[2], 1, true), r.reason)
      end)
    end)
  end
end)

describe("declared defaults are what the evaluators do", function()
  it("contains: mode defaults to all", function()
    local ev = sandbox.evaluator("contains")
    assert.is_false(ev:evaluate({ output = "a" }, { value = { "a", "b" } }).pass)
    assert.equal("all", ev.options.mode.default)
  end)
  it("equals: trim and case_sensitive default to true", function()
    local ev = sandbox.evaluator("equals")
    assert.is_true(ev:evaluate({ output = " x ", expected = "x" }, {}).pass)
    assert.is_false(ev:evaluate({ output = "X", expected = "x" }, {}).pass)
    assert.is_true(ev.options.trim.default)
    assert.is_true(ev.options.case_sensitive.default)
  end)
  it("feedback: min_score defaults to 0.5, printed exactly", function()
    local ev = sandbox.evaluator("feedback")
    local r = ev:evaluate({ output = "x", trace = { feedback = { { source = "explicit", score = 0.45 } } } }, {})
    assert.is_false(r.pass)
    assert.equal("feedback score 0.45 is under 0.5", r.reason)
    assert.equal(0.5, ev.options.min_score.default)
  end)
  it("llm_judge: threshold 0.5 and max_tokens 300 by default", function()
    local asked
    local ev = assert(sandbox.load_evaluator("evaluators/llm_judge.lua", { llm = function(req)
      asked = req
      return { text = '{"score": 0.5, "reason": "meh"}' }
    end }))
    local r = ev:evaluate({ output = "x" }, { rubric = "r" })
    assert.is_true(r.pass)
    assert.equal(300, asked.max_tokens)
  end)
end)

describe("an evaluator written before options were declared", function()
  it("keeps working: string declarations name the options (types unchecked), lib.text.check_opts still checks", function()
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write([[
local text = require "lib.text"
return { name = "old", description = "older style", options = { word = "the word to find" },
  evaluate = function(case, opts)
    text.check_opts("old", opts, { word = "string" })
    return { pass = case.output == opts.word }
  end }
]])
    f:close()
    local ev = assert(sandbox.load_evaluator(path, { dirs = { "evaluators" } }))
    os.remove(path)
    assert.is_true(ev:evaluate({ output = "x" }, { word = "x" }).pass)
    local ok, problems = ev:check_options({ wrod = "x" })
    assert.is_false(ok)
    assert.matches("unknown option 'wrod'; did you mean 'word'%?", problems[1])
    assert.is_true((ev:check_options({ word = 3 }))) -- a description declares no type
    local r = ev:evaluate({ output = "x" }, { word = 3 })
    assert.equal("error", r.status)
    assert.matches("option 'word' must be a string", r.reason)
  end)
end)
