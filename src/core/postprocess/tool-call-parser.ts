/**
 * The body of one Hermes-style tool call — the text between `<tool_call>` and `</tool_call>`, i.e.
 * `{"name": "get_weather", "arguments": {"city": "Paris"}}` — parsed as it streams: the name is reported as soon as
 * it is complete, then the arguments JSON piece by piece, as OpenAI streams `function.arguments`.
 *
 * The incremental path expects the name first (what Kiln's grammar produces and what these models are trained on).
 * Anything else is parsed whole when the call ends; a body that is not a call at all is given back as text.
 */
export type CallEvent = { type: 'start'; name: string } | { type: 'arguments'; text: string };

/** `{"name": "<name>", "arguments": ` followed by the first character of the arguments. */
const HEADER = /^\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)/;

export class ToolCallBodyParser {
  private buffer = '';
  private phase: 'header' | 'arguments' | 'tail' = 'header';
  private depth = 0;
  private inString = false;
  private escaped = false;
  private started = false;

  /** True once the call's name has been reported. */
  get hasStarted(): boolean {
    return this.started;
  }

  push(text: string): CallEvent[] {
    if (this.phase === 'tail') return [];
    this.buffer += text;
    const events: CallEvent[] = [];
    if (this.phase === 'header') {
      const match = HEADER.exec(this.buffer);
      if (match === null) return events;
      const next = this.buffer[match[0].length];
      // Streaming needs an object or array to know where the arguments end; other shapes wait for the whole call.
      if (next !== '{' && next !== '[') return events;
      const name = parseJsonString(match[1]!);
      if (name === undefined) return events;
      this.started = true;
      events.push({ type: 'start', name });
      this.buffer = this.buffer.slice(match[0].length);
      this.phase = 'arguments';
    }
    const { consumed, complete } = this.scanArguments(this.buffer);
    if (consumed > 0) events.push({ type: 'arguments', text: this.buffer.slice(0, consumed) });
    // After the arguments only the call's closing brace is left; it is not reported.
    this.buffer = complete ? '' : this.buffer.slice(consumed);
    return events;
  }

  /**
   * The call's closing marker arrived (or the text ended). Returns the events of a call that only parses whole, or
   * `undefined` when the body is not a tool call (the caller then treats it as text).
   */
  end(): CallEvent[] | undefined {
    if (this.started) return [];
    const whole = parseWholeCall(this.buffer);
    if (whole === undefined) return undefined;
    this.started = true;
    return [
      { type: 'start', name: whole.name },
      { type: 'arguments', text: whole.arguments },
    ];
  }

  /** The arguments JSON has been read to its end. */
  get isComplete(): boolean {
    return this.phase === 'tail';
  }

  /** The raw body seen so far, for giving back a non-call as text. */
  get rawBody(): string {
    return this.buffer;
  }

  /** Consumes arguments text up to the end of the JSON value; returns how many characters belong to it. */
  private scanArguments(text: string): { consumed: number; complete: boolean } {
    for (let i = 0; i < text.length; i++) {
      const char = text[i]!;
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (char === '\\') this.escaped = true;
        else if (char === '"') this.inString = false;
        continue;
      }
      if (char === '"') this.inString = true;
      else if (char === '{' || char === '[') this.depth++;
      else if (char === '}' || char === ']') {
        this.depth--;
        if (this.depth === 0) {
          this.phase = 'tail';
          return { consumed: i + 1, complete: true };
        }
      }
    }
    return { consumed: text.length, complete: false };
  }
}

function parseJsonString(body: string): string | undefined {
  try {
    return JSON.parse(`"${body}"`) as string;
  } catch {
    return undefined;
  }
}

function parseWholeCall(body: string): { name: string; arguments: string } | undefined {
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null) return undefined;
  const { name, arguments: args } = value as { name?: unknown; arguments?: unknown };
  if (typeof name !== 'string' || name === '') return undefined;
  if (typeof args === 'string') return { name, arguments: args };
  return { name, arguments: JSON.stringify(args ?? {}) };
}
