-- A runner, loaded with spec.helpers.sandbox like an evaluator, that puts
-- one file of the JSON-Schema-Test-Suite through the json_schema evaluator
-- inside the engine's sandbox (the file crosses as JSON, so arrays stay
-- arrays). case.output: the file's groups; opts.skip: group description ->
-- reason. Answers pass when every case not skipped passes, and the
-- validator's fast yes/no path agrees with its detailed one on it; the
-- reason is "passed total skipped" then the failures.
local json_schema = require "json_schema"
local jsonschema = require "lib.jsonschema"

return {
  name = "schema_suite",
  description = "runs JSON-Schema-Test-Suite groups through json_schema",
  evaluate = function(case, opts)
    local skip = opts.skip or {}
    local passed, total, skipped, failures = 0, 0, 0, {}
    for _, group in ipairs(case.output) do
      for _, t in ipairs(group.tests) do
        if skip[group.description] then
          skipped = skipped + 1
        else
          total = total + 1
          local ok, r = pcall(json_schema.evaluate, { output = ratchet.json.encode(t.data) }, { schema = group.schema })
          if not ok then r = { reason = r } end
          -- the fast yes/no path and the detailed one must agree on every case
          local agree, why = true, nil
          local okc, _, fast, detailed = pcall(jsonschema.compile, group.schema)
          if okc then
            local f, d = fast(t.data), (detailed(t.data))
            if f ~= d then agree, why = false, "fast path says " .. tostring(f) .. ", detailed " .. tostring(d) end
          end
          if r.pass == t.valid and agree then
            passed = passed + 1
          else
            failures[#failures + 1] = group.description .. " / " .. t.description .. " (" .. tostring(why or r.reason) .. ")"
          end
        end
      end
    end
    return { pass = passed == total, reason = passed .. " " .. total .. " " .. skipped .. "\n" .. table.concat(failures, "\n") }
  end,
}
