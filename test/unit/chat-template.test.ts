/** The model's own Jinja chat template, rendered from OpenAI-style messages (tools, calls, results, thinking). */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { test } from 'node:test';
import type { ChatMessage, ToolDefinition } from '../../src/core/chat-request.js';
import { CHATML_FALLBACK, ChatTemplate, TemplateError, type RenderOptions } from '../../src/engines/llama/chat-template.js';
import { getRuntime } from '../../src/engines/llama/runtime.js';
import { QWEN25_TEMPLATE, R1_DISTILL_TEMPLATE } from '../../src/gguf/templates.js';
import { ensureTinyModel } from '../../src/gguf/tiny-model.js';

const SHARED_TEMPLATES = resolve(import.meta.dirname, '../../../shared/models/templates');
const noShared = !existsSync(SHARED_TEMPLATES);
const shared = (file: string) => readFileSync(join(SHARED_TEMPLATES, file), 'utf8');

const QWEN_SPECIALS = { bos: '<|endoftext|>', eos: '<|im_end|>' };
const R1_SPECIALS = { bos: '<｜begin▁of▁sentence｜>', eos: '<｜end▁of▁sentence｜>' };

const WEATHER: ToolDefinition = {
  name: 'get_weather',
  description: 'Weather for a city',
  parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
};
const plain: RenderOptions = { tools: [], enableThinking: undefined, continueLastAssistant: false };
const withTools: RenderOptions = { ...plain, tools: [WEATHER] };

const toolHistory: ChatMessage[] = [
  { role: 'system', content: 'You are terse.' },
  { role: 'user', content: 'Weather in Paris and Rome?' },
  {
    role: 'assistant',
    content: '',
    toolCalls: [
      { id: 'c1', name: 'get_weather', arguments: '{"city":"Paris"}' },
      { id: 'c2', name: 'get_weather', arguments: 'not json' },
    ],
  },
  { role: 'tool', content: '{"temp": 21}', toolCallId: 'c1' },
  { role: 'tool', content: '{"temp": 25}', toolCallId: 'c2' },
  { role: 'assistant', content: 'Paris 21, Rome 25.' },
  { role: 'user', content: 'Thanks' },
];

test('Qwen2.5: tools in the system prompt, calls as <tool_call> JSON with object arguments, results as <tool_response>', () => {
  const template = new ChatTemplate(QWEN25_TEMPLATE, QWEN_SPECIALS);
  assert.deepEqual(template.features, { toolSyntax: 'hermes', reasoning: false, thinkingToggle: false });
  const { text, thinkingOpen } = template.render(toolHistory, withTools);
  assert.ok(text.startsWith('<|im_start|>system\nYou are terse.\n\n# Tools\n'), text);
  assert.ok(text.includes('<tools>\n{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": {"type": "object", '), text);
  assert.ok(text.includes('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'), text);
  // Arguments that are not JSON go through as the client's string.
  assert.ok(text.includes('{"name": "get_weather", "arguments": "not json"}\n</tool_call><|im_end|>\n'), text);
  assert.ok(text.includes('<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response>\n<tool_response>\n{"temp": 25}\n</tool_response><|im_end|>\n'), text);
  assert.ok(text.endsWith('<|im_start|>user\nThanks<|im_end|>\n<|im_start|>assistant\n'), text);
  assert.equal(thinkingOpen, false);
});

test('Qwen2.5: its default system prompt when none is given, and no tool section without tools', () => {
  const { text } = new ChatTemplate(QWEN25_TEMPLATE, QWEN_SPECIALS).render([{ role: 'user', content: 'Hi' }], plain);
  assert.equal(
    text,
    '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
  );
});

test('continueLastAssistant renders the rest with the generation prompt, then the prefix raw', () => {
  const messages: ChatMessage[] = [
    { role: 'user', content: 'Count' },
    { role: 'assistant', content: 'One, two,' },
  ];
  const { text } = new ChatTemplate(QWEN25_TEMPLATE, QWEN_SPECIALS).render(messages, { ...plain, continueLastAssistant: true });
  assert.ok(text.endsWith('<|im_start|>user\nCount<|im_end|>\n<|im_start|>assistant\nOne, two,'), text);
  const r1 = new ChatTemplate(R1_DISTILL_TEMPLATE, R1_SPECIALS).render(messages, { ...plain, continueLastAssistant: true });
  assert.ok(r1.text.endsWith('<｜User｜>Count<｜Assistant｜><think>\nOne, two,'), r1.text);
  assert.equal(r1.thinkingOpen, true);
});

test('R1 distill: the prompt opens <think>; enable_thinking false closes it', () => {
  const template = new ChatTemplate(R1_DISTILL_TEMPLATE, R1_SPECIALS);
  assert.deepEqual(template.features, { toolSyntax: 'none', reasoning: true, thinkingToggle: true });
  const messages: ChatMessage[] = [
    { role: 'system', content: 'Be brief.' },
    { role: 'user', content: 'Hi' },
  ];
  const open = template.render(messages, plain);
  assert.equal(open.text, '<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜><think>\n');
  assert.equal(open.thinkingOpen, true);
  assert.deepEqual(template.render(messages, { ...plain, enableThinking: true }), open);
  const closed = template.render(messages, { ...plain, enableThinking: false });
  assert.equal(closed.text, '<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜><think>\n</think>');
  assert.equal(closed.thinkingOpen, false);
});

test('R1 distill has no tool syntax: Kiln writes the tools, calls and results in', () => {
  const { text } = new ChatTemplate(R1_DISTILL_TEMPLATE, R1_SPECIALS).render(toolHistory, withTools);
  assert.ok(text.startsWith('<｜begin▁of▁sentence｜># Tools\n'), text);
  assert.ok(text.includes('</tool_call>\n\nYou are terse.<｜User｜>Weather in Paris and Rome?'), text);
  assert.ok(
    text.includes('<｜Assistant｜><tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": "not json"}\n</tool_call><｜end▁of▁sentence｜>'),
    text,
  );
  assert.ok(text.includes('<｜User｜><tool_response>\n{"temp": 21}\n</tool_response>\n<tool_response>\n{"temp": 25}\n</tool_response><｜Assistant｜>Paris 21, Rome 25.'), text);
  assert.ok(text.endsWith('<｜User｜>Thanks<｜Assistant｜><think>\n'), text);
});

test('a reasoning template without a toggle: Kiln closes the think block itself', () => {
  const opens = new ChatTemplate("{{ messages[0].content }}{% if add_generation_prompt %}|A|<think>\n{% endif %}", R1_SPECIALS);
  assert.deepEqual(opens.features, { toolSyntax: 'none', reasoning: true, thinkingToggle: false });
  const closed = opens.render([{ role: 'user', content: 'Hi' }], { ...plain, enableThinking: false });
  assert.deepEqual(closed, { text: 'Hi|A|<think>\n\n</think>\n\n', thinkingOpen: false });
  assert.equal(opens.render([{ role: 'user', content: 'Hi' }], plain).thinkingOpen, true);

  // Knows <think> (strips it from history) but does not open it: an empty block is added.
  const strips = new ChatTemplate("{{ messages[0].content.split('</think>')[-1] }}{% if false %}<think>{% endif %}|A|", R1_SPECIALS);
  assert.deepEqual(strips.render([{ role: 'user', content: 'Hi' }], { ...plain, enableThinking: false }), {
    text: 'Hi|A|<think>\n\n</think>\n\n',
    thinkingOpen: false,
  });
  assert.equal(strips.render([{ role: 'user', content: 'Hi' }], plain).text, 'Hi|A|');
});

test('a template without tool syntax (ChatML) gets the tool list in its system message, calls and results as text', () => {
  const template = new ChatTemplate(CHATML_FALLBACK, QWEN_SPECIALS);
  assert.deepEqual(template.features, { toolSyntax: 'none', reasoning: false, thinkingToggle: false });
  const { text } = template.render(toolHistory.slice(1), withTools);
  assert.ok(text.startsWith('<|im_start|>system\n# Tools\n\nYou may call one or more functions'), text);
  assert.ok(text.includes('{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": '), text);
  assert.ok(text.includes('<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n<|im_start|>user\nWeather'), text);
  assert.ok(text.includes('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>'), text);
  assert.ok(text.includes('<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response>\n<tool_response>\n{"temp": 25}\n</tool_response><|im_end|>\n<|im_start|>assistant\nParis'), text);

  // An existing system message keeps its text after the tool list; without tools nothing is added.
  const withSystem = template.render([{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi' }], withTools).text;
  assert.ok(withSystem.includes('</tool_call>\n\nBe brief.<|im_end|>\n<|im_start|>user\nHi'), withSystem);
  assert.equal(template.render([{ role: 'user', content: 'Hi' }], plain).text, '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n');
});

test('template failures are TemplateErrors', () => {
  const raising = new ChatTemplate("{{ raise_exception('Conversation roles must alternate') }}", QWEN_SPECIALS);
  assert.throws(() => raising.render([{ role: 'user', content: 'Hi' }], plain), (error: unknown) => {
    assert.ok(error instanceof TemplateError);
    assert.match(error.message, /Conversation roles must alternate/);
    return true;
  });
  assert.throws(() => new ChatTemplate('{% if %}', QWEN_SPECIALS), TemplateError);
  const failing = new ChatTemplate('{{ messages[0].content.nope() }}', QWEN_SPECIALS);
  assert.throws(() => failing.render([{ role: 'user', content: 'Hi' }], plain), TemplateError);
});

test('the embedded templates are the shared ones', { skip: noShared }, () => {
  assert.equal(QWEN25_TEMPLATE, shared('Qwen-Qwen2.5-7B-Instruct.jinja'));
  assert.equal(R1_DISTILL_TEMPLATE, shared('deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja'));
});

test('the shared real templates render tool histories and multi-turn chats', { skip: noShared }, () => {
  const qwq = new ChatTemplate(shared('Qwen-QwQ-32B.jinja'), QWEN_SPECIALS);
  assert.deepEqual(qwq.features, { toolSyntax: 'hermes', reasoning: true, thinkingToggle: true });
  const qwqText = qwq.render(toolHistory, withTools);
  assert.ok(qwqText.text.includes('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'), qwqText.text);
  assert.ok(qwqText.text.endsWith('<|im_start|>assistant\n<think>\n') && qwqText.thinkingOpen);
  assert.equal(qwq.render(toolHistory, { ...withTools, enableThinking: false }).thinkingOpen, false);

  const r1 = new ChatTemplate(shared('llama-cpp-deepseek-r1.jinja'), R1_SPECIALS);
  assert.deepEqual(r1.features, { toolSyntax: 'none', reasoning: true, thinkingToggle: false });
  const r1Text = r1.render(toolHistory, withTools);
  assert.ok(r1Text.text.includes('<｜User｜><tool_response>\n{"temp": 21}'), r1Text.text);
  assert.ok(r1Text.text.endsWith('<｜Assistant｜><think>\n') && r1Text.thinkingOpen);
  const r1Closed = r1.render(toolHistory, { ...withTools, enableThinking: false });
  assert.ok(r1Closed.text.endsWith('<｜Assistant｜><think>\n\n</think>\n\n') && !r1Closed.thinkingOpen);

  const llama = new ChatTemplate(shared('meta-llama-Llama-3.1-8B-Instruct.jinja'), { bos: '<|begin_of_text|>', eos: '<|eot_id|>' });
  assert.equal(llama.features.toolSyntax, 'none');
  const llamaText = llama.render(toolHistory, withTools).text;
  assert.ok(llamaText.startsWith('<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n'), llamaText);
  assert.ok(llamaText.includes('<|start_header_id|>user<|end_header_id|>\n\n<tool_response>\n{"temp": 21}'), llamaText);
  assert.ok(llamaText.endsWith('<|start_header_id|>assistant<|end_header_id|>\n\n'), llamaText);

  const turns: ChatMessage[] = [
    { role: 'user', content: 'Hi' },
    { role: 'assistant', content: '<think>greet</think>Hello!' },
    { role: 'user', content: 'Bye' },
  ];
  for (const file of ['Qwen-QwQ-32B.jinja', 'deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja', 'llama-cpp-deepseek-r1.jinja']) {
    const text = new ChatTemplate(shared(file), R1_SPECIALS).render(turns, plain).text;
    assert.ok(!text.includes('greet'), `${file} feeds earlier reasoning back: ${text}`);
    assert.ok(text.includes('Hello!') && text.includes('Bye'), text);
  }
});

test('tiny qwen2.5 and r1-distill models: the rendered prompt tokenizes into their special tokens', async () => {
  const llama = await getRuntime();
  for (const [flavor, marker] of [['qwen2.5', '<|im_start|>'], ['r1-distill', '<｜User｜>']] as const) {
    const model = await llama.loadModel({ modelPath: await ensureTinyModel({ flavor }) });
    try {
      const template = ChatTemplate.fromModel(model);
      const { text } = template.render([{ role: 'user', content: 'Hi' }], withTools);
      const tokens = model.tokenize(text, true);
      const markerToken = model.tokenize(marker, true);
      assert.equal(markerToken.length, 1, `${flavor}: ${marker} is one special token`);
      assert.ok(tokens.includes(markerToken[0]!), `${flavor}: ${marker} in the prompt tokens`);
      assert.ok(model.tokens.eos !== null && model.isEogToken(model.tokens.eos), `${flavor}: eos ends generation`);
      if (flavor === 'qwen2.5') {
        assert.equal(template.features.toolSyntax, 'hermes');
        assert.equal(model.detokenize([model.tokens.eos!], true), '<|im_end|>');
        assert.ok(text.includes('# Tools'));
      } else {
        assert.equal(model.detokenize([model.tokens.eos!], true), '<｜end▁of▁sentence｜>');
        assert.equal(tokens[0], model.tokens.bos, 'the template writes bos first');
        assert.equal(model.tokenize('<｜Assistant｜>', true).length, 1);
        assert.ok(text.endsWith('<｜Assistant｜><think>\n'));
      }
    } finally {
      await model.dispose();
    }
  }
});
