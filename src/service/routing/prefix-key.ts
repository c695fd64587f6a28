/**
 * The affinity key of a request: a hash of the beginning of its conversation, so that every turn of one chat goes to
 * the deployment that already holds that beginning in its KV cache (SGLang's cache-aware routing, by hash).
 *
 * The beginning is the offered tools (templates render them into the system prompt) and the messages up to and
 * including the first user message:
 * - turn 2 of a chat resends turn 1's messages and appends to them, so its beginning — and its key — is turn 1's;
 * - two users who share a system prompt differ in their first question, so their conversations spread over the
 *   deployments instead of all landing on the one that holds the system prompt. (Hashing the system prompt alone
 *   would send a whole application to one replica; hashing everything would change the key every turn.)
 * Many conversations with the same opening (a fixed first question) do share a key; bounded load (hash-ring.ts)
 * keeps that from overloading their deployment.
 */
import { createHash } from 'node:crypto';
import { offeredTools, type ChatRequest } from '../../core/chat-request.js';

/** The conversation's stable beginning, as the text that is hashed. */
export function conversationPrefix(request: Pick<ChatRequest, 'messages' | 'tools' | 'toolChoice'>): string {
  const firstUser = request.messages.findIndex((message) => message.role === 'user');
  const opening = firstUser === -1 ? request.messages : request.messages.slice(0, firstUser + 1);
  const tools = offeredTools(request).map((tool) => [tool.name, tool.description ?? null, tool.parameters ?? null]);
  const messages = opening.map((message) => [message.role, message.content, message.toolCalls ?? null, message.toolCallId ?? null]);
  return JSON.stringify([tools, messages]);
}

/** A point on the hash ring (32 bits). */
export function ringPoint(text: string): number {
  return createHash('sha256').update(text).digest().readUInt32BE(0);
}

export function prefixKey(request: Pick<ChatRequest, 'messages' | 'tools' | 'toolChoice'>): number {
  return ringPoint(conversationPrefix(request));
}
