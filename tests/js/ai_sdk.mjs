// The Vercel AI SDK (`ai` + @ai-sdk/openai-compatible) against sorat, unchanged:
// `node ai_sdk.mjs SCENARIO` with SORAT_BASE_URL (…/v1) and SORAT_TOKEN in the environment
// (SORAT_TOOL_EVENTS, if set, goes out as X-Sorat-Tool-Events; SORAT_PROMPT replaces the prompt "hi").
// Prints one JSON object on stdout; tests/test_clients.py asserts on it.
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { generateText, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const toolEvents = process.env.SORAT_TOOL_EVENTS;
const sorat = createOpenAICompatible({
  name: "sorat",
  baseURL: process.env.SORAT_BASE_URL,
  apiKey: process.env.SORAT_TOKEN,
  includeUsage: true,
  headers: toolEvents ? { "X-Sorat-Tool-Events": toolEvents } : {},
});
const model = sorat.chatModel("sorat-agent");
const common = { model, prompt: process.env.SORAT_PROMPT || "hi", maxRetries: 0 };

function weatherTool(calls) {
  return tool({
    description: "Weather in a city",
    inputSchema: z.object({ city: z.string() }),
    execute: async ({ city }) => {
      calls.push({ city });
      return { sky: "sunny", city };
    },
  });
}

// the parts of a fullStream, trimmed to what a test asserts on
function part(p) {
  switch (p.type) {
    case "text-delta":
    case "reasoning-delta":
      return { type: p.type, text: p.text };
    case "tool-call":
      return { type: p.type, toolName: p.toolName, input: p.input, invalid: p.invalid ?? false };
    case "tool-result":
      return { type: p.type, toolName: p.toolName, output: p.output };
    case "tool-error":
      return { type: p.type, toolName: p.toolName, error: String(p.error) };
    case "finish-step":
    case "finish":
      return { type: p.type, finishReason: p.finishReason };
    case "error":
      return { type: p.type, error: String(p.error) };
    default:
      return { type: p.type };
  }
}

const scenarios = {
  async generate() {
    const r = await generateText(common);
    return { text: r.text, finishReason: r.finishReason, usage: r.usage, modelId: r.response.modelId };
  },

  // a streamed answer whose agent run made internal tool calls (per tool_events)
  async stream() {
    const r = streamText({ ...common, onError: () => {} });
    const parts = [];
    for await (const p of r.fullStream) parts.push(part(p));
    return {
      parts,
      text: await r.text,
      finishReason: await r.finishReason,
      usage: await r.usage,
      toolCalls: (await r.toolCalls).map((c) => ({ toolName: c.toolName, input: c.input })),
    };
  },

  // the same with stopWhen (more steps allowed) and no tools: a call the SDK cannot run ends in a
  // tool-error, which a second step sends back as a tool result
  async stream_stop_when() {
    const r = streamText({ ...common, stopWhen: stepCountIs(3), onError: () => {} });
    const parts = [];
    for await (const p of r.fullStream) parts.push(part(p));
    return {
      parts,
      text: await r.text,
      finishReason: await r.finishReason,
      steps: (await r.steps).map((s) => ({ finishReason: s.finishReason, text: s.text })),
    };
  },

  // a client tool, run by the SDK over several steps
  async generate_tools() {
    const calls = [];
    const r = await generateText({
      ...common,
      tools: { get_weather: weatherTool(calls) },
      stopWhen: stepCountIs(3),
    });
    return {
      text: r.text,
      finishReason: r.finishReason,
      calls,
      steps: r.steps.map((s) => ({
        finishReason: s.finishReason,
        toolCalls: s.toolCalls.map((c) => ({ toolName: c.toolName, input: c.input })),
        text: s.text,
        reasoningText: s.reasoningText ?? null,
      })),
    };
  },

  // the same, streamed
  async stream_tools() {
    const calls = [];
    const r = streamText({
      ...common,
      tools: { get_weather: weatherTool(calls) },
      stopWhen: stepCountIs(3),
      onError: () => {},
    });
    const parts = [];
    for await (const p of r.fullStream) parts.push(part(p));
    return { parts, text: await r.text, finishReason: await r.finishReason, calls };
  },
};

const name = process.argv[2];
if (!scenarios[name]) {
  console.error(`unknown scenario ${name}; one of ${Object.keys(scenarios).join(", ")}`);
  process.exit(2);
}
process.stdout.write(JSON.stringify(await scenarios[name]()) + "\n");
