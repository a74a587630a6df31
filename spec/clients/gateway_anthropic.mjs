// gateway_anthropic.mjs — drives ratchet's gateway with the official Anthropic
// SDK, unmodified: only baseURL, apiKey and headers are configured.
// usage: node gateway_anthropic.mjs SCENARIO   (env: BASE_URL, API_KEY, ARGS as JSON)
import Anthropic from "@anthropic-ai/sdk";

const args = JSON.parse(process.env.ARGS || "{}");
const client = new Anthropic({
  baseURL: process.env.BASE_URL,
  apiKey: process.env.API_KEY || "none",
  maxRetries: args.max_retries ?? 0,
  timeout: args.timeout_ms ?? 20000,
  defaultHeaders: args.headers || {},
});
const scenario = process.argv[2];

function params() {
  return { model: args.model, max_tokens: args.max_tokens ?? 256, messages: args.messages || [], ...(args.extra || {}) };
}

async function chat() {
  const { data, response } = await client.messages.create(params()).withResponse();
  return { status: response.status, trace_header: response.headers.get("x-ratchet-trace-id"), body: data };
}

async function stream() {
  const s = client.messages.stream(params());
  let text = "", events = 0;
  s.on("text", (t) => { text += t; });
  s.on("streamEvent", () => { events++; });
  const final = await s.finalMessage();
  return { text, events, final };
}

const run = { chat, stream }[scenario];
try {
  console.log(JSON.stringify(await run()));
} catch (e) {
  console.log(JSON.stringify({
    error: e.constructor.name, status: e.status ?? null, message: e.message,
    retry_after: e.headers?.get?.("retry-after") ?? null, type: e.error?.error?.type ?? null,
  }));
}
