// spec/clients/check.mjs — the clients the specs use load under node 22.
const names = ["openai", "@anthropic-ai/sdk", "@opentelemetry/api", "@opentelemetry/sdk-trace",
  "@opentelemetry/exporter-trace-otlp-proto", "@opentelemetry/exporter-trace-otlp-http", "playwright-core"];
for (const n of names) await import(n);
console.log(process.version + " " + names.length);
