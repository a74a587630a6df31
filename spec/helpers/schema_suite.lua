-- A runner, loaded with spec.helpers.sandbox like an evaluator, that puts
-- one file of the JSON-Schema-Test-Suite through the json_schema evaluator
-- inside the engine's sandbox (the file crosses as JSON, so arrays stay
-- arrays). case.output: the file's groups; opts.skip: group description ->
-- reason. Answers pass when every case not skipped passes; the reason is
-- "passed total skipped" then the failures.
local json_schema = require "json_schema"

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
          if r.pass == t.valid then
            passed = passed + 1
          else
            failures[#failures + 1] = group.description .. " / " .. t.description .. " (" .. tostring(r.reason) .. ")"
          end
        end
      end
    end
    return { pass = passed == total, reason = passed .. " " .. total .. " " .. skipped .. "\n" .. table.concat(failures, "\n") }
  end,
}
