// spec/clients/otlp_genai.mjs — an application instrumented by hand with the
// OpenTelemetry JS SDK, writing the current GenAI semantic conventions
// (gen_ai.input.messages, gen_ai.output.messages, gen_ai.system_instructions,
// gen_ai.provider.name, gen_ai.usage.*), exported by the real OTLP exporter,
// unmodified: @opentelemetry/exporter-trace-otlp-proto (argv[2] = "proto") or
// -otlp-http (JSON, argv[2] = "json").
//
// env: OTLP_URL (the OTLP listener, http://host:port), TOKEN (the ingest
// token, sent as the exporter's configured header), RUN (an id making the
// spans' attributes unique). Prints one JSON line per export: {code, error}.
import { trace, SpanStatusCode } from "@opentelemetry/api";
import { TracerProvider, BatchSpanProcessor } from "@opentelemetry/sdk-trace";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { OTLPTraceExporter as ProtoExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { OTLPTraceExporter as JsonExporter } from "@opentelemetry/exporter-trace-otlp-http";

const mode = process.argv[2] || "proto";
const Exporter = mode === "json" ? JsonExporter : ProtoExporter;
const headers = process.env.TOKEN ? { Authorization: `Bearer ${process.env.TOKEN}` } : {};
const exporter = new Exporter({ url: `${process.env.OTLP_URL}/v1/traces`, headers });
// observe each export's result (the exporter itself is not changed)
const exportOnce = exporter.export.bind(exporter);
exporter.export = (spans, done) => exportOnce(spans, (r) => {
  console.log(JSON.stringify({ code: r.code, error: r.error ? String(r.error.message || r.error) : null }));
  done(r);
});
const provider = new TracerProvider({
  resource: resourceFromAttributes({ "service.name": "support-app" }),
  spanProcessors: [new BatchSpanProcessor({ exporter })], // one batch at forceFlush
});
trace.setGlobalTracerProvider(provider);
const tracer = trace.getTracer("support-app");
const run = process.env.RUN || "r1";

// an LLM call, as the current conventions describe it
const span = tracer.startSpan("chat gpt-4o-mini", {
  attributes: {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
    "gen_ai.response.id": `chatcmpl-${run}`,
    "gen_ai.usage.input_tokens": 42,
    "gen_ai.usage.output_tokens": 7,
    "gen_ai.system_instructions": JSON.stringify([{ type: "text", content: "You answer support tickets." }]),
    "gen_ai.input.messages": JSON.stringify([
      { role: "user", parts: [{ type: "text", content: `I was charged twice (${run})` }] },
    ]),
    "gen_ai.output.messages": JSON.stringify([
      { role: "assistant", parts: [{ type: "text", content: "We will refund you." },
        { type: "tool_call", id: "call_1", name: "refund", arguments: { amount: 10 } }], finish_reason: "stop" },
    ]),
    "gen_ai.conversation.id": `conv-${run}`,
    "ratchet.prompt.name": "support",
    "ratchet.prompt.version": 1,
    "ratchet.prompt.variables": JSON.stringify({ ticket: `I was charged twice (${run})` }),
  },
});
span.end();

// a failed LLM call
const failed = tracer.startSpan("chat gpt-4o-mini", {
  attributes: { "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini", "ratchet.prompt.name": "support" },
});
failed.setStatus({ code: SpanStatusCode.ERROR, message: "429 rate limited" });
failed.end();

// not an LLM call: dropped and counted
tracer.startSpan("SELECT tickets", { attributes: { "db.system": "postgresql" } }).end();

await provider.forceFlush();
await provider.shutdown();
console.log(JSON.stringify({ trace_id: span.spanContext().traceId, span_id: span.spanContext().spanId,
  failed_trace_id: failed.spanContext().traceId, failed_span_id: failed.spanContext().spanId }));
