// The official `openai` Node SDK against a running Switchyard gateway.
//
//   node tests/node/client_matrix.mjs http://127.0.0.1:PORT/v1 [--only=chat,responses,...]
//
// The base URL may also come from SWITCHYARD_BASE_URL (with or without the trailing `/v1`).
// The gateway must serve the local chat model as `auto` / `local-small`, the local embedding model
// as `local-embed`, and the fake provider as `fake` (tests/python/conftest.py's session gateway).
// Every check of the selected groups runs; each prints `ok GROUP/NAME` or `FAIL GROUP/NAME: why`,
// and the script exits 1 when any failed (2 on bad arguments).

import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { VERSION as SDK_VERSION } from 'openai/version';

const args = process.argv.slice(2);
const positional = args.filter((a) => !a.startsWith('--'));
const only = args.find((a) => a.startsWith('--only='))?.slice('--only='.length).split(',').filter(Boolean);
let base = positional[0] ?? process.env.SWITCHYARD_BASE_URL;
if (!base) {
  console.error('usage: node client_matrix.mjs BASE_URL [--only=GROUP,...]  (or set SWITCHYARD_BASE_URL)');
  process.exit(2);
}
base = base.replace(/\/+$/, '');
if (!base.endsWith('/v1')) base += '/v1';

// No retries: a failure must show as one, not as a slow success.
const client = new OpenAI({ baseURL: base, apiKey: 'unused', maxRetries: 0, timeout: 120_000 });

const PROMPT = [{ role: 'user', content: 'Name three colours.' }];
const EMBED_INPUT = ['The quick brown fox jumps over the lazy dog.', 'A gateway routes requests to models.'];
const EMBED_DIMENSIONS = 384;

/** Float32 values of a little-endian base64 embedding, as the API encodes them. */
function decodeBase64Embedding(text) {
  const bytes = Buffer.from(text, 'base64');
  assert.equal(bytes.length % 4, 0, `base64 embedding of ${bytes.length} bytes is not whole float32s`);
  const out = new Float32Array(bytes.length / 4);
  for (let i = 0; i < out.length; i++) out[i] = bytes.readFloatLE(i * 4);
  return Array.from(out);
}

function assertUnitVectors(vectors, what) {
  assert.equal(vectors.length, EMBED_INPUT.length, `${what}: one vector per input`);
  for (const [i, v] of vectors.entries()) {
    assert.equal(v.length, EMBED_DIMENSIONS, `${what}: vector ${i} has ${v.length} values, not ${EMBED_DIMENSIONS}`);
    assert.ok(Array.from(v).every((x) => typeof x === 'number' && Number.isFinite(x)), `${what}: vector ${i} has non-finite values`);
    const norm = Math.sqrt(Array.from(v).reduce((s, x) => s + x * x, 0));
    assert.ok(Math.abs(norm - 1) < 1e-3, `${what}: vector ${i} has norm ${norm}, not 1`);
  }
}

function assertClose(a, b, what) {
  assert.equal(a.length, b.length, `${what}: lengths differ`);
  for (let i = 0; i < a.length; i++) {
    assert.ok(Math.abs(a[i] - b[i]) < 1e-6, `${what}: value ${i} is ${a[i]}, expected ${b[i]}`);
  }
}

const checks = {
  chat: {
    async 'create'() {
      const r = await client.chat.completions.create({ model: 'auto', messages: PROMPT, max_completion_tokens: 24, temperature: 0 });
      assert.equal(r.object, 'chat.completion');
      assert.ok(r.id, 'an id');
      assert.equal(r.choices.length, 1);
      assert.equal(r.choices[0].message.role, 'assistant');
      assert.ok(r.choices[0].message.content?.trim(), 'non-empty content');
      assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason), `finish_reason ${r.choices[0].finish_reason}`);
      assert.ok(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 24, `usage ${JSON.stringify(r.usage)}`);
      assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
    },
    async 'create stream with usage'() {
      const whole = await client.chat.completions.create({ model: 'auto', messages: PROMPT, max_completion_tokens: 24, temperature: 0 });
      const stream = await client.chat.completions.create({
        model: 'auto', messages: PROMPT, max_completion_tokens: 24, temperature: 0,
        stream: true, stream_options: { include_usage: true },
      });
      let text = '';
      let finish = null;
      let usage = null;
      let chunks = 0;
      for await (const chunk of stream) {
        chunks++;
        assert.equal(chunk.object, 'chat.completion.chunk');
        for (const choice of chunk.choices) {
          text += choice.delta?.content ?? '';
          finish = choice.finish_reason ?? finish;
        }
        if (chunk.usage) {
          assert.deepEqual(chunk.choices, [], 'the usage chunk carries no choices');
          usage = chunk.usage;
        }
      }
      assert.ok(chunks >= 2, `${chunks} chunks`);
      assert.equal(text, whole.choices[0].message.content, 'temperature 0: the same text streamed and not');
      assert.ok(finish, 'a chunk carried finish_reason');
      assert.ok(usage, 'include_usage gives a usage chunk');
      assert.equal(usage.completion_tokens, whole.usage.completion_tokens);
      assert.equal(usage.prompt_tokens, whole.usage.prompt_tokens);
    },
    async 'stream helper'() {
      const deltas = [];
      const stream = client.chat.completions.stream({
        model: 'auto', messages: PROMPT, max_completion_tokens: 24, temperature: 0, stream_options: { include_usage: true },
      });
      stream.on('content', (delta) => deltas.push(delta));
      const final = await stream.finalChatCompletion();
      const content = final.choices[0].message.content;
      assert.ok(content?.trim(), 'the helper assembled non-empty content');
      assert.equal(deltas.join(''), content, 'content events add up to the final message');
      assert.ok(deltas.length >= 2, `${deltas.length} content events`);
      assert.ok(final.usage?.completion_tokens >= 1, `usage ${JSON.stringify(final.usage)}`);
    },
    async 'tool call (fake provider)'() {
      const tools = [{
        type: 'function',
        function: {
          name: 'get_weather', description: 'Current weather in a city',
          parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
        },
      }];
      const r = await client.chat.completions.create({ model: 'fake/tool', messages: [{ role: 'user', content: 'Weather in Paris?' }], tools });
      const call = r.choices[0].message.tool_calls?.[0];
      assert.ok(call, `a tool call in ${JSON.stringify(r.choices[0].message)}`);
      assert.equal(call.type, 'function');
      assert.equal(call.function.name, 'get_weather');
      JSON.parse(call.function.arguments);
      assert.equal(r.choices[0].finish_reason, 'tool_calls');
    },
  },

  responses: {
    async 'create and retrieve'() {
      const r = await client.responses.create({ model: 'auto', input: 'What is 2+2? Answer with a number.', max_output_tokens: 32, temperature: 0 });
      assert.equal(r.object, 'response');
      assert.equal(r.status, 'completed');
      assert.ok(r.id, 'an id');
      assert.ok(r.output_text.trim(), 'output_text (the SDK joins the output_text parts)');
      assert.ok(r.usage.output_tokens >= 1, `usage ${JSON.stringify(r.usage)}`);
      const again = await client.responses.retrieve(r.id);
      assert.equal(again.id, r.id);
      assert.equal(again.status, 'completed');
      assert.equal(again.output_text, r.output_text, 'retrieve returns the stored answer');
    },
    async 'create stream'() {
      const stream = await client.responses.create({ model: 'auto', input: 'What is 2+2? Answer with a number.', max_output_tokens: 32, temperature: 0, stream: true });
      const types = [];
      let text = '';
      let completed = null;
      let sequence = -1;
      for await (const event of stream) {
        types.push(event.type);
        assert.ok(event.sequence_number > sequence, `sequence_number ${event.sequence_number} after ${sequence}`);
        sequence = event.sequence_number;
        if (event.type === 'response.output_text.delta') text += event.delta;
        if (event.type === 'response.completed') completed = event.response;
      }
      assert.equal(types[0], 'response.created', `first event: ${types[0]}`);
      assert.equal(types.at(-1), 'response.completed', `last event: ${types.at(-1)}`);
      assert.ok(types.includes('response.output_text.delta'), `events: ${[...new Set(types)].join(', ')}`);
      assert.ok(text.trim(), 'the deltas carry text');
      assert.equal(completed.status, 'completed');
      const finalText = completed.output.flatMap((item) => item.content ?? []).filter((c) => c.type === 'output_text').map((c) => c.text).join('');
      assert.equal(finalText, text, 'response.completed holds the text the deltas carried');
      const stored = await client.responses.retrieve(completed.id);
      assert.equal(stored.output_text, text, 'a streamed response is stored too');
    },
    async 'stream helper'() {
      const deltas = [];
      const stream = client.responses.stream({ model: 'fake/echo', input: 'one two three' });
      stream.on('response.output_text.delta', (event) => deltas.push(event.delta));
      const final = await stream.finalResponse();
      assert.equal(final.status, 'completed');
      assert.ok(final.output_text.includes('one two three'), `output_text ${JSON.stringify(final.output_text)}`);
      assert.equal(deltas.join(''), final.output_text);
    },
  },

  completions: {
    async 'create (legacy)'() {
      const r = await client.completions.create({ model: 'local-small', prompt: '1, 2, 3, 4,', max_tokens: 8, temperature: 0 });
      assert.equal(r.object, 'text_completion');
      assert.ok(r.choices[0].text, 'non-empty text');
      assert.ok(r.choices[0].text.includes('5'), `greedy continuation of a count: ${JSON.stringify(r.choices[0].text)}`);
      assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
      assert.ok(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 8, `usage ${JSON.stringify(r.usage)}`);
    },
    async 'create (legacy) stream'() {
      const stream = await client.completions.create({
        model: 'local-small', prompt: 'The capital of France is', max_tokens: 8, temperature: 0,
        stream: true, stream_options: { include_usage: true },
      });
      let text = '';
      let usage = null;
      for await (const chunk of stream) {
        assert.equal(chunk.object, 'text_completion');
        text += chunk.choices[0]?.text ?? '';
        if (chunk.usage) usage = chunk.usage;
      }
      assert.ok(text, 'the chunks carry text');
      assert.ok(usage?.completion_tokens >= 1, `usage ${JSON.stringify(usage)}`);
    },
  },

  embeddings: {
    async 'floats, SDK default and base64'() {
      const floats = await client.embeddings.create({ model: 'local-embed', input: EMBED_INPUT, encoding_format: 'float' });
      assert.equal(floats.object, 'list');
      assert.equal(floats.model, 'local-embed');
      assert.deepEqual(floats.data.map((d) => d.index), [0, 1]);
      assert.ok(floats.data.every((d) => d.object === 'embedding'));
      const vectors = floats.data.map((d) => d.embedding);
      assertUnitVectors(vectors, 'encoding_format float');
      assert.ok(floats.usage.prompt_tokens > 0 && floats.usage.total_tokens === floats.usage.prompt_tokens, `usage ${JSON.stringify(floats.usage)}`);

      // Without encoding_format the SDK asks for base64 itself and decodes it to floats.
      const sdkDefault = await client.embeddings.create({ model: 'local-embed', input: EMBED_INPUT });
      const decoded = sdkDefault.data.map((d) => Array.from(d.embedding));
      assertUnitVectors(decoded, 'SDK default (base64 on the wire)');
      decoded.forEach((v, i) => assertClose(v, vectors[i], `SDK-decoded vector ${i}`));

      // Asked for explicitly, base64 comes back as the string; its float32s are the same vector.
      const b64 = await client.embeddings.create({ model: 'local-embed', input: EMBED_INPUT, encoding_format: 'base64' });
      assert.ok(b64.data.every((d) => typeof d.embedding === 'string'), 'base64 embeddings are strings');
      const fromB64 = b64.data.map((d) => decodeBase64Embedding(d.embedding));
      assertUnitVectors(fromB64, 'encoding_format base64');
      fromB64.forEach((v, i) => assertClose(v, vectors[i], `base64 vector ${i}`));
    },
  },

  structured: {
    async 'json_schema on the local model'() {
      const schema = {
        type: 'object',
        properties: {
          name: { type: 'string', maxLength: 24 },
          age: { type: 'integer', minimum: 0, maximum: 120 },
          colours: { type: 'array', items: { enum: ['red', 'green', 'blue'] }, minItems: 1, maxItems: 3 },
        },
        required: ['name', 'age', 'colours'],
        additionalProperties: false,
      };
      const r = await client.chat.completions.create({
        model: 'auto',
        messages: [{ role: 'user', content: 'Describe a person and their favourite colours.' }],
        response_format: { type: 'json_schema', json_schema: { name: 'person', schema, strict: true } },
        max_completion_tokens: 200, temperature: 0,
      });
      assert.equal(r.choices[0].finish_reason, 'stop', 'the grammar ends the object before max tokens');
      const content = r.choices[0].message.content;
      let value;
      assert.doesNotThrow(() => { value = JSON.parse(content); }, `not JSON: ${content}`);
      assert.deepEqual(Object.keys(value).sort(), ['age', 'colours', 'name'], content);
      assert.equal(typeof value.name, 'string');
      assert.ok(value.name.length <= 24, content);
      assert.ok(Number.isInteger(value.age) && value.age >= 0 && value.age <= 120, content);
      assert.ok(Array.isArray(value.colours) && value.colours.length >= 1 && value.colours.length <= 3, content);
      assert.ok(value.colours.every((c) => ['red', 'green', 'blue'].includes(c)), content);
    },
  },
};

const unknown = (only ?? []).filter((g) => !(g in checks));
if (unknown.length) {
  console.error(`unknown group(s) ${unknown.join(', ')}; groups: ${Object.keys(checks).join(', ')}`);
  process.exit(2);
}

console.log(`openai-node ${SDK_VERSION} on Node ${process.versions.node} against ${base}`);
let failed = 0;
let passed = 0;
for (const [group, groupChecks] of Object.entries(checks)) {
  if (only && !only.includes(group)) continue;
  for (const [name, check] of Object.entries(groupChecks)) {
    const started = performance.now();
    try {
      await check();
      passed++;
      console.log(`ok ${group}/${name} (${Math.round(performance.now() - started)} ms)`);
    } catch (err) {
      failed++;
      const detail = err instanceof OpenAI.APIError ? `HTTP ${err.status}: ${err.message}` : (err?.stack ?? String(err));
      console.log(`FAIL ${group}/${name}: ${detail}`);
    }
  }
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
