// The one way the app talks to the gateway's public API (same origin, /v1): JSON calls and the message stream.

import { end, session } from "../state/session";
import { ApiError, asApiError, describeError, networkError, retryAfter } from "./errors";
import { parseMessageEvent, SseParser, type ApiErrorBody, type MessageStreamEvent, type Usage } from "./sse";

export interface Conversation {
  id: string;
  title: string;
  archived: boolean;
  created_at: number | null;
  updated_at: number | null;
}

export interface Message {
  id: string;
  role: "user" | "assistant" | "system";
  content: string;
  status: "complete" | "incomplete";
  model: string | null;
  finish_reason: string | null;
  usage: Usage | null;
  created_at: number | null;
}

export interface ConversationPage {
  data: Conversation[];
  has_more: boolean;
  next_cursor: string | null;
}

export interface ApiKey {
  id: string;
  name: string;
  prefix: string;
  created_at: number | null;
  last_used_at: number | null;
  revoked_at: number | null;
}

export interface UsageRow {
  date: string;
  api_key_id: string | null;
  model: string;
  requests: number;
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export interface UsageReport {
  start_date: string;
  end_date: string;
  data: UsageRow[];
  totals: { requests: number; prompt_tokens: number; completion_tokens: number; total_tokens: number };
}

export interface Quota {
  api_key_id: string | null;
  period: "day" | "month";
  token_limit: number;
  used_tokens: number;
  period_start: string;
  period_end: string;
}

type Context = "login" | "signup" | "default";

async function errorFrom(resp: Response, context: Context): Promise<ApiError> {
  let body: ApiErrorBody | null = null;
  try {
    const json = (await resp.json()) as { error?: ApiErrorBody };
    body = json.error ?? null;
  } catch {
    body = null; // not JSON (a proxy's page): the status says enough
  }
  const err = describeError(resp.status, body, retryAfter(resp.headers), context);
  if (err.kind === "expired" && context === "default") end("expired");
  return err;
}

async function send(path: string, init: RequestInit, context: Context, auth: boolean): Promise<Response> {
  const headers = new Headers(init.headers);
  if (init.body !== undefined) headers.set("Content-Type", "application/json");
  if (auth) {
    const s = session.get();
    if (!s) {
      end("expired");
      throw new ApiError("expired", "Your session has ended. Please log in again.", 401);
    }
    headers.set("Authorization", `Bearer ${s.token}`);
  }
  let resp: Response;
  try {
    resp = await fetch(path, { ...init, headers, credentials: "omit", cache: "no-store" });
  } catch (err) {
    if ((err as Error)?.name === "AbortError") throw err;
    throw networkError();
  }
  if (!resp.ok) throw await errorFrom(resp, context);
  return resp;
}

export async function call<T>(
  method: string,
  path: string,
  body?: unknown,
  { auth = true, context = "default" as Context, signal }: { auth?: boolean; context?: Context; signal?: AbortSignal } = {},
): Promise<T> {
  const resp = await send(
    path,
    { method, body: body === undefined ? undefined : JSON.stringify(body), signal },
    context,
    auth,
  );
  try {
    return (await resp.json()) as T;
  } catch (err) {
    throw asApiError(err);
  }
}

export const api = {
  signup: (email: string, password: string) =>
    call<{ id: string }>("POST", "/v1/auth/signup", { email, password }, { auth: false, context: "signup" }),
  login: (email: string, password: string) =>
    call<{ access_token: string; expires_in: number }>(
      "POST",
      "/v1/auth/login",
      { email, password },
      { auth: false, context: "login" },
    ),
  models: () => call<{ data: { id: string }[] }>("GET", "/v1/models"),
  conversations: (after: string | null, limit = 20, includeArchived = false) => {
    const q = new URLSearchParams({ limit: String(limit) });
    if (after) q.set("after", after);
    if (includeArchived) q.set("include_archived", "true");
    return call<ConversationPage>("GET", `/v1/conversations?${q}`);
  },
  createConversation: () => call<Conversation>("POST", "/v1/conversations", {}),
  conversation: (id: string) =>
    call<Conversation & { messages: Message[] }>("GET", `/v1/conversations/${encodeURIComponent(id)}`),
  updateConversation: (id: string, change: { title?: string; archived?: boolean }) =>
    call<Conversation>("PATCH", `/v1/conversations/${encodeURIComponent(id)}`, change),
  deleteConversation: (id: string) => call<unknown>("DELETE", `/v1/conversations/${encodeURIComponent(id)}`),
  apiKeys: () => call<{ data: ApiKey[] }>("GET", "/v1/api-keys"),
  createApiKey: (name: string) => call<ApiKey & { key: string }>("POST", "/v1/api-keys", { name }),
  revokeApiKey: (id: string) => call<ApiKey>("DELETE", `/v1/api-keys/${encodeURIComponent(id)}`),
  usage: (startDate: string, endDate: string) =>
    call<UsageReport>("GET", `/v1/usage?${new URLSearchParams({ start_date: startDate, end_date: endDate })}`),
  quotas: () => call<{ data: Quota[] }>("GET", "/v1/quotas"),
};

export interface SendOptions {
  content: string;
  /** Replace the last reply with a new answer to the last user message (`content` is then not sent). */
  regenerate?: boolean;
  model?: string;
  temperature?: number;
  maxTokens?: number;
}

/** Send a message and read the reply's events as they come; `signal` stops it (the gateway then stops the model). */
export async function streamMessage(
  conversationId: string,
  options: SendOptions,
  onEvent: (event: MessageStreamEvent) => void,
  signal: AbortSignal,
): Promise<void> {
  const body: Record<string, unknown> = options.regenerate
    ? { regenerate: true, stream: true }
    : { content: options.content, stream: true };
  if (options.model) body.model = options.model;
  // Sent only when the user chose them: otherwise the model's own defaults apply.
  if (options.temperature !== undefined) body.temperature = options.temperature;
  if (options.maxTokens !== undefined) body.max_tokens = options.maxTokens;
  const resp = await send(
    `/v1/conversations/${encodeURIComponent(conversationId)}/messages`,
    { method: "POST", body: JSON.stringify(body), signal, headers: { Accept: "text/event-stream" } },
    "default",
    true,
  );
  if (!resp.body) throw networkError();
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SseParser();
  try {
    for (;;) {
      let chunk: ReadableStreamReadResult<string>;
      try {
        chunk = await reader.read();
      } catch (err) {
        if ((err as Error)?.name === "AbortError") throw err;
        throw networkError(); // the connection broke mid-reply
      }
      if (chunk.done) break;
      for (const e of parser.feed(chunk.value)) {
        const event = parseMessageEvent(e.data);
        onEvent(event);
        if (event.type === "end") return;
      }
    }
  } finally {
    reader.releaseLock();
  }
  throw networkError(); // the stream ended without [DONE]
}
