// The official JavaScript SDK, @google/genai, unchanged but for its base URL: one call of
// SCENARIO, and one JSON line on stdout of what the SDK made of the answer.
//   usage: node client.mjs BASE_URL API_KEY SCENARIO [MODEL] [TEXT]
// Scenarios: generate, stream, count, embed, list; interaction and interaction-stream (the
// Interactions API, TEXT the input), interaction-get (TEXT an interaction id: the
// interaction, or the error the SDK threw); error and error-stream (a call the gateway
// refuses, unary or streamed: the ApiError as the SDK parsed it). Exit 0 only when
// the scenario went as it should (for the error ones: the SDK threw its ApiError), else 1
// with the reason on stderr. Run by tests/sdk/test_node_sdk.py.
import { ApiError, GoogleGenAI } from "@google/genai";

const [baseUrl, apiKey, scenario, modelArg, textArg] = process.argv.slice(2);
if (!baseUrl || !apiKey || !scenario) {
  console.error("usage: node client.mjs BASE_URL API_KEY SCENARIO [MODEL] [TEXT]");
  process.exit(2);
}
const defaultModel = scenario === "embed" ? "gemini-embedding-001" : "gemini-2.5-flash";
const model = modelArg || defaultModel;
const text = textArg || "Explain why the sea is salty, briefly.";

// No retryOptions: the SDK's default is one attempt, so a refusal reaches us as it came.
const ai = new GoogleGenAI({ apiKey, httpOptions: { baseUrl } });

// Runs CALL, which must throw the SDK's ApiError; what the error carries.
async function refusal(call) {
  try {
    const response = await call();
    throw new Error(`expected a refusal, got ${JSON.stringify(response)}`);
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    // ApiError.status is the HTTP status; its message is the error body, as JSON text.
    let body = null;
    try {
      body = JSON.parse(err.message);
    } catch {
      // not JSON: the raw message alone
    }
    return {
      name: err.name,
      isApiError: true,
      status: err.status,
      message: err.message,
      error: body?.error ?? null,
    };
  }
}

const scenarios = {
  async generate() {
    const response = await ai.models.generateContent({ model, contents: text });
    return {
      text: response.text,
      usageMetadata: response.usageMetadata,
      finishReason: response.candidates?.[0]?.finishReason,
      modelVersion: response.modelVersion,
      responseId: response.responseId,
    };
  },
  async stream() {
    const texts = [];
    let usageMetadata;
    let finishReason;
    for await (const chunk of await ai.models.generateContentStream({ model, contents: text })) {
      texts.push(chunk.text ?? "");
      usageMetadata = chunk.usageMetadata ?? usageMetadata;
      finishReason = chunk.candidates?.[0]?.finishReason ?? finishReason;
    }
    return { text: texts.join(""), chunks: texts.length, texts, usageMetadata, finishReason };
  },
  async count() {
    const response = await ai.models.countTokens({ model, contents: text });
    return { totalTokens: response.totalTokens };
  },
  async embed() {
    const response = await ai.models.embedContent({ model, contents: text });
    return { embeddings: (response.embeddings ?? []).map((e) => e.values) };
  },
  async list() {
    const pager = await ai.models.list();
    return {
      names: pager.page.map((m) => m.name),
      methods: Object.fromEntries(pager.page.map((m) => [m.name, m.supportedActions])),
    };
  },
  async interaction() {
    const made = await ai.interactions.create({ model, input: text });
    return { id: made.id, status: made.status, text: made.output_text, usage: made.usage };
  },
  async "interaction-stream"() {
    const events = [];
    for await (const event of await ai.interactions.create({ model, input: text, stream: true })) {
      events.push(event.event_type);
    }
    return { events };
  },
  async "interaction-get"() {
    try {
      const got = await ai.interactions.get(text);
      return { id: got.id, status: got.status, text: got.output_text };
    } catch (err) {
      // The interactions client throws errors of its own, with the HTTP status on them.
      return { name: err?.name, status: err?.status ?? null, message: String(err?.message) };
    }
  },
  // A call the gateway refuses, unary and streamed: the ApiError as the SDK parsed it.
  error: () => refusal(() => ai.models.generateContent({ model, contents: text })),
  "error-stream": () =>
    refusal(async () => {
      const chunks = [];
      for await (const chunk of await ai.models.generateContentStream({ model, contents: text })) {
        chunks.push(chunk);
      }
      return chunks;
    }),
};

const run = scenarios[scenario];
if (!run) {
  console.error(`unknown scenario ${scenario}; one of: ${Object.keys(scenarios).join(", ")}`);
  process.exit(2);
}
try {
  const result = await run();
  process.stdout.write(`${JSON.stringify({ scenario, model, ...result })}\n`);
} catch (err) {
  console.error(`${scenario} failed: ${err?.name}: ${err?.message}`);
  if (err?.stack) console.error(err.stack);
  process.exit(1);
}
