// gateway_openai.mjs — drives ratchet's gateway with the official OpenAI SDK,
// unmodified: only baseURL, apiKey and headers are configured.
// usage: node gateway_openai.mjs SCENARIO   (env: BASE_URL, API_KEY, ARGS as JSON)
// Prints one JSON object per scenario on stdout.
import OpenAI from "openai";

const args = JSON.parse(process.env.ARGS || "{}");
const client = new OpenAI({
  baseURL: process.env.BASE_URL + "/v1",
  apiKey: process.env.API_KEY || "none",
  maxRetries: args.max_retries ?? 0,
  timeout: args.timeout_ms ?? 20000,
  defaultHeaders: args.headers || {},
});
const scenario = process.argv[2];

async function chat() {
  const { data, response } = await client.chat.completions
    .create({ model: args.model, messages: args.messages || [], ...(args.extra || {}) })
    .withResponse();
  return { status: response.status, trace_header: response.headers.get("x-ratchet-trace-id"), body: data };
}

async function stream() {
  const s = await client.chat.completions.create({
    model: args.model, messages: args.messages || [], stream: true, ...(args.extra || {}),
  });
  let text = "", chunks = 0, usage = null, finish = null, calls = {};
  for await (const chunk of s) {
    chunks++;
    if (chunk.usage) usage = chunk.usage;
    const ch = chunk.choices[0];
    if (!ch) continue;
    if (ch.delta?.content) text += ch.delta.content;
    for (const tc of ch.delta?.tool_calls || []) {
      calls[tc.index] = calls[tc.index] || { name: "", arguments: "" };
      if (tc.function?.name) calls[tc.index].name += tc.function.name;
      if (tc.function?.arguments) calls[tc.index].arguments += tc.function.arguments;
    }
    if (ch.finish_reason) finish = ch.finish_reason;
  }
  return { text, chunks, usage, finish, tool_calls: Object.values(calls) };
}

async function abort_stream() {
  // reads the first chunk, then hangs up
  const controller = new AbortController();
  const s = await client.chat.completions.create(
    { model: args.model, messages: args.messages || [], stream: true }, { signal: controller.signal });
  for await (const chunk of s) {
    controller.abort();
    return { first: chunk.choices[0]?.delta ?? null };
  }
  return { first: null };
}

async function models() {
  const page = await client.models.list();
  return { ids: page.data.map((m) => m.id) };
}

const run = { chat, stream, abort_stream, models }[scenario];
try {
  console.log(JSON.stringify(await run()));
} catch (e) {
  console.log(JSON.stringify({
    error: e.constructor.name, status: e.status ?? null, message: e.message,
    retry_after: e.headers?.get?.("retry-after") ?? null, type: e.error?.type ?? e.type ?? null,
    param: e.param ?? null,
  }));
}
