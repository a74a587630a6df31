// spec/clients/otlp_instrumented.mjs — an application calling the `openai`
// SDK, instrumented by a real instrumentation library from npm, unmodified,
// exporting with the real OTLP protobuf exporters. argv[2] picks it:
//   otel           @opentelemetry/instrumentation-openai (spans, and the
//                  GenAI events as log records through exporter-logs-otlp-proto)
//   openinference  @arizeai/openinference-instrumentation-openai
//   openllmetry    @traceloop/instrumentation-openai
//   vercel         the Vercel AI SDK (`ai` + `@ai-sdk/openai`) with its
//                  telemetry on (`@ai-sdk/otel`), instead of the openai SDK
// env: OTLP_URL, TOKEN, LLM_URL (ratchet fake-llm's /v1), PROMPT and
// PROMPT_VERSION (sent as the ratchet.prompt.name / .version resource
// attributes: one service, one prompt); LOGS_FIRST=1 exports the log
// records before the spans (the two come on different requests, in any order).
// Prints {trace_id, span_id, output} of the call's span.
import { trace, context } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { TracerProvider, BatchSpanProcessor } from "@opentelemetry/sdk-trace";
import { LoggerProvider, BatchLogRecordProcessor } from "@opentelemetry/sdk-logs";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { OTLPLogExporter } from "@opentelemetry/exporter-logs-otlp-proto";
import OpenAI from "openai";
import * as openaiModule from "openai";

const lib = process.argv[2];
const headers = { Authorization: `Bearer ${process.env.TOKEN}` };
const resource = resourceFromAttributes({ "service.name": `app-${lib}`, "ratchet.prompt.name": process.env.PROMPT,
  "ratchet.prompt.version": Number(process.env.PROMPT_VERSION || 1) });
context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
const provider = new TracerProvider({ resource, spanProcessors: [new BatchSpanProcessor({
  exporter: new OTLPTraceExporter({ url: `${process.env.OTLP_URL}/v1/traces`, headers }) })] });
trace.setGlobalTracerProvider(provider);
const loggerProvider = new LoggerProvider({ resource, processors: [new BatchLogRecordProcessor({
  exporter: new OTLPLogExporter({ url: `${process.env.OTLP_URL}/v1/logs`, headers }) })] });

// ESM modules are not patched at import without a loader hook: each
// library's own entry point for that case patches the module object.
if (lib === "otel") {
  const { OpenAIInstrumentation } = await import("@opentelemetry/instrumentation-openai");
  const inst = new OpenAIInstrumentation({ captureMessageContent: true });
  inst.setTracerProvider(provider);
  inst.setLoggerProvider(loggerProvider);
  // its module definition says openai <7; its patch is applied as the loader would
  for (const def of inst.init()) def.patch(OpenAI.prototype ? { ...openaiModule, OpenAI } : openaiModule);
} else if (lib === "openinference") {
  const { OpenAIInstrumentation } = await import("@arizeai/openinference-instrumentation-openai");
  const inst = new OpenAIInstrumentation();
  inst.setTracerProvider(provider);
  inst.manuallyInstrument(openaiModule);
} else if (lib === "openllmetry") {
  const { OpenAIInstrumentation } = await import("@traceloop/instrumentation-openai");
  const inst = new OpenAIInstrumentation({ traceContent: true });
  inst.setTracerProvider(provider);
  inst.manuallyInstrument(OpenAI); // it reads OpenAI.Chat.Completions
}

if (lib === "vercel") {
  const { generateText, registerTelemetry } = await import("ai");
  const { createOpenAI } = await import("@ai-sdk/openai");
  // ai 7 emits its ai.* spans through this integration (the convention
  // ratchet maps); the other one, OpenTelemetry, writes gen_ai.*
  const { LegacyOpenTelemetry } = await import("@ai-sdk/otel");
  registerTelemetry(new LegacyOpenTelemetry({ tracer: trace.getTracer("ai") }));
  const openai = createOpenAI({ apiKey: "sk-test", baseURL: process.env.LLM_URL });
  const ids = {};
  await trace.getTracer("app").startActiveSpan("handle ticket", async (root) => {
    const r = await generateText({ model: openai.chat("gpt-4o-mini"), system: "You answer support tickets.",
      messages: [{ role: "user", content: "I was charged twice" }],
      experimental_telemetry: { isEnabled: true } });
    ids.output = r.text;
    ids.trace_id = root.spanContext().traceId;
    root.end();
  });
  await provider.forceFlush();
  await provider.shutdown();
  await loggerProvider.shutdown();
  console.log(JSON.stringify(ids));
  process.exit(0);
}

const client = new openaiModule.OpenAI({ apiKey: "sk-test", baseURL: process.env.LLM_URL });
let ids = {};
const tracer = trace.getTracer("app");
await tracer.startActiveSpan("handle ticket", async (root) => {
  const r = await client.chat.completions.create({ model: "gpt-4o-mini", messages: [
    { role: "system", content: "You answer support tickets." },
    { role: "user", content: "I was charged twice" }] });
  ids.output = r.choices[0].message.content;
  ids.trace_id = root.spanContext().traceId;
  root.end();
});
if (process.env.LOGS_FIRST === "1") {
  await loggerProvider.forceFlush();
  await provider.forceFlush();
} else {
  await provider.forceFlush();
  await loggerProvider.forceFlush();
}
await provider.shutdown();
await loggerProvider.shutdown();
console.log(JSON.stringify(ids));
