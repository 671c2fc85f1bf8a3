// openai-node against sorat, unchanged: `node openai_node.mjs SCENARIO` with SORAT_BASE_URL (…/v1) and
// SORAT_TOKEN in the environment (SORAT_TOOL_EVENTS, if set, goes out as X-Sorat-Tool-Events).
// Prints one JSON object on stdout; tests/test_clients.py asserts on it.
import OpenAI from "openai";

const toolEvents = process.env.SORAT_TOOL_EVENTS;
const client = new OpenAI({
  baseURL: process.env.SORAT_BASE_URL,
  apiKey: process.env.SORAT_TOKEN,
  maxRetries: 0,
  timeout: 20_000,
  defaultHeaders: toolEvents ? { "X-Sorat-Tool-Events": toolEvents } : {},
});
const messages = [{ role: "user", content: "hi" }];
const weather = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Weather in a city",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
};

const scenarios = {
  // a whole answer
  async create() {
    const { data, response } = await client.chat.completions
      .create({ model: "sorat-agent", messages })
      .withResponse();
    return { completion: data, sessionId: response.headers.get("x-session-id") };
  },

  // a streamed answer whose agent run made internal tool calls
  async stream() {
    const stream = await client.chat.completions.create({
      model: "sorat-agent",
      messages,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    return { chunks };
  },

  // the stream helper, which accumulates the deltas into a final ChatCompletion
  async stream_helper() {
    const events = [];
    let content = "";
    const runner = client.chat.completions
      .stream({ model: "sorat-agent", messages })
      .on("content", (delta) => {
        content += delta;
      })
      .on("tool_calls.function.arguments.done", (e) => events.push({ name: e.name, args: e.parsed_arguments }));
    const final = await runner.finalChatCompletion();
    return { final, content, toolEvents: events, finalContent: await runner.finalContent() };
  },

  // runTools with a client tool: openai-node runs it and sends the result back, sorat continues
  async run_tools() {
    const calls = [];
    const runner = client.chat.completions.runTools({
      model: "sorat-agent",
      messages,
      tools: [
        {
          type: "function",
          function: {
            ...weather.function,
            parse: JSON.parse,
            function: (args) => {
              calls.push(args);
              return { sky: "sunny", city: args.city };
            },
          },
        },
      ],
    });
    const finalContent = await runner.finalContent();
    return { finalContent, calls, messages: runner.messages };
  },

  // the same, streamed
  async run_tools_stream() {
    const calls = [];
    let content = "";
    const runner = client.chat.completions.runTools({
      model: "sorat-agent",
      messages,
      stream: true,
      tools: [
        {
          type: "function",
          function: {
            ...weather.function,
            parse: JSON.parse,
            function: (args) => {
              calls.push(args);
              return { sky: "sunny", city: args.city };
            },
          },
        },
      ],
    });
    runner.on("content", (delta) => {
      content += delta;
    });
    const finalContent = await runner.finalContent();
    return { finalContent, content, calls, messages: runner.messages };
  },

  // a wrong token: the SDK's typed error
  async bad_key() {
    const bad = new OpenAI({ baseURL: process.env.SORAT_BASE_URL, apiKey: "wrong", maxRetries: 0 });
    try {
      await bad.chat.completions.create({ model: "sorat-agent", messages });
      return { error: null };
    } catch (e) {
      return { error: { name: e.constructor.name, status: e.status, type: e.type, code: e.code } };
    }
  },

  async models() {
    const ids = [];
    for await (const m of client.models.list()) ids.push(m.id);
    return { ids };
  },
};

const name = process.argv[2];
if (!scenarios[name]) {
  console.error(`unknown scenario ${name}; one of ${Object.keys(scenarios).join(", ")}`);
  process.exit(2);
}
process.stdout.write(JSON.stringify(await scenarios[name]()) + "\n");
