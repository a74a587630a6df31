-- http_check: does the API call the output describes work? The output is a
-- JSON object {method, path, query?, headers?, body?}; the call is made
-- against base_url (which the config's http.allow must also list) and its
-- status and body are checked.
local text = require "lib.text"
local jsonschema = require "lib.jsonschema"

local cache = setmetatable({}, { __mode = "k" })

local KNOWN_METHODS = { GET = true, POST = true, PUT = true, PATCH = true, DELETE = true, HEAD = true, OPTIONS = true }

local OPTIONS = {
  base_url = { type = "string", required = true, nonempty = true,
               description = "where calls go, e.g. \"https://staging.example.com/api\" (must be under http.allow)" },
  field = { type = "string", nonempty = true, description = "the call is output[field] instead of the whole output" },
  expect_status = { type = { "integer", "list" }, items = "integer", min = 100, max = 599, nonempty = true,
                    description = "an acceptable status, or a list of them (default: any 2xx)" },
  body_contains = { type = "string", description = "text the response body must contain" },
  body_schema = { type = { "object", "boolean" }, description = "a JSON Schema the response body (JSON) must validate against" },
  methods = { type = "list", items = "string", nonempty = true, default = { "GET", "POST", "PUT", "PATCH", "DELETE" },
              description = "the methods the output may use" },
  headers = { type = "object", items = "string", description = "headers sent with every call (e.g. a test token)" },
  timeout_ms = { type = "integer", min = 1, description = "per call (default: the config's http.timeout_ms)" },
}

local function urlencode(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

return {
  name = "http_check",
  description = "performs the HTTP call the output describes against an allow-listed base URL and checks the answer",
  options = OPTIONS,
  -- the body schema must compile: checked when the config loads
  check = function(opts)
    if opts.body_schema ~= nil then jsonschema.compile(opts.body_schema) end
    for _, m in ipairs(opts.methods or {}) do
      if not KNOWN_METHODS[m:upper()] then
        error("option 'methods': '" .. m .. "' is not an HTTP method (GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS)", 0)
      end
    end
  end,
  evaluate = function(case, opts)
    local call, err = text.output_json(case)
    if call == nil then return text.fail("output is not valid JSON: " .. text.excerpt(err)) end
    if opts.field then call = type(call) == "table" and call[opts.field] or nil end
    if type(call) ~= "table" then return text.fail("output does not describe a call (a JSON object)") end
    local method = type(call.method) == "string" and call.method:upper() or "GET"
    local allowed = {}
    for _, m in ipairs(text.opt(opts, OPTIONS, "methods")) do allowed[m:upper()] = true end
    if not allowed[method] then return text.fail("method " .. text.excerpt(method) .. " is not allowed") end
    local path = call.path
    if type(path) ~= "string" or path:sub(1, 1) ~= "/" or path:find("..", 1, true) or path:find("://", 1, true)
        or path:find("[%s%c@\\#]") then
      return text.fail("path must be a string starting with / (no .., no scheme, no spaces): " .. text.excerpt(tostring(path)))
    end
    local url = opts.base_url:gsub("/+$", "") .. path
    if type(call.query) == "table" then
      local q = {}
      for k, v in pairs(call.query) do q[#q + 1] = urlencode(k) .. "=" .. urlencode(v) end
      table.sort(q)
      if #q > 0 then url = url .. (url:find("?", 1, true) and "&" or "?") .. table.concat(q, "&") end
    end
    -- headers the output asks for must be sendable: a bad one is bad output
    -- (a failed case), where ratchet.http.request would raise
    local headers, nheaders = {}, 0
    if type(call.headers) == "table" then
      for k, v in pairs(call.headers) do
        v = tostring(v)
        if type(k) ~= "string" or not k:find("^[^:%s]+$") or v:find("[\r\n]") then
          return text.fail("header " .. text.excerpt(tostring(k)) .. " is not a one-line header")
        end
        headers[k], nheaders = v, nheaders + 1
      end
    end
    for k, v in pairs(opts.headers or {}) do
      if headers[k] == nil then nheaders = nheaders + 1 end
      headers[k] = v
    end
    if nheaders > 64 then return text.fail("the call has more than 64 headers") end
    local body = call.body
    if body ~= nil and type(body) ~= "string" then
      body = ratchet.json.encode(body)
      headers["Content-Type"] = headers["Content-Type"] or "application/json"
    end
    local res, herr, kind = ratchet.http.request { method = method, url = url, headers = headers, body = body,
                                                   timeout_ms = opts.timeout_ms }
    if not res then
      if kind == "not_allowed" then error("http_check: " .. herr, 0) end
      return text.fail(string.format("the call failed (%s): %s", kind, text.excerpt(herr, 200)))
    end
    local ok_status
    if opts.expect_status == nil then
      ok_status = res.status >= 200 and res.status < 300
    else
      for _, s in ipairs(text.list(opts.expect_status)) do ok_status = ok_status or res.status == s end
    end
    local what = method .. " " .. path .. " -> " .. res.status
    if not ok_status then return text.fail(what .. ": unexpected status; body: " .. text.excerpt(res.body, 120)) end
    if opts.body_contains and not res.body:find(opts.body_contains, 1, true) then
      return text.fail(what .. ": body does not contain " .. text.excerpt(opts.body_contains))
    end
    if opts.body_schema ~= nil then
      local v = cache[opts.body_schema]
      if not v then v = jsonschema.compile(opts.body_schema); cache[opts.body_schema] = v end
      local value, derr = ratchet.json.decode(res.body)
      if value == nil and derr then return text.fail(what .. ": body is not JSON") end
      local ok, why = v(value)
      if not ok then return text.fail(what .. ": body does not match the schema: " .. jsonschema.summary(why)) end
    end
    return text.pass(what)
  end,
}
