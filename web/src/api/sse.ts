// Server-sent events as the gateway sends them (text/event-stream), parsed incrementally: chunks may split an
// event, a line or a UTF-8 character anywhere.

export interface SseEvent {
  event: string;
  data: string;
}

/** The event-stream format: fields per line, an empty line ends an event; several `data:` lines join with "\n". */
export class SseParser {
  private buffer = "";
  private data: string[] = [];
  private event = "";
  private sawCR = false;

  /** Feed decoded text; returns the events it completed. */
  feed(text: string): SseEvent[] {
    const out: SseEvent[] = [];
    let start = 0;
    if (this.sawCR && text.startsWith("\n")) start = 1; // the \n of a \r\n split across chunks
    this.sawCR = false;
    const chunk = this.buffer + text.slice(start);
    this.buffer = "";
    let lineStart = 0;
    for (let i = 0; i < chunk.length; i++) {
      const c = chunk[i];
      if (c !== "\n" && c !== "\r") continue;
      this.line(chunk.slice(lineStart, i), out);
      if (c === "\r") {
        if (i + 1 < chunk.length) {
          if (chunk[i + 1] === "\n") i++;
        } else {
          this.sawCR = true;
        }
      }
      lineStart = i + 1;
    }
    this.buffer = chunk.slice(lineStart);
    return out;
  }

  /** The stream ended: an event without its closing blank line is dropped, as the format says. */
  end(): SseEvent[] {
    this.buffer = "";
    this.data = [];
    this.event = "";
    return [];
  }

  private line(line: string, out: SseEvent[]): void {
    if (line === "") {
      if (this.data.length > 0) out.push({ event: this.event || "message", data: this.data.join("\n") });
      this.data = [];
      this.event = "";
      return;
    }
    if (line.startsWith(":")) return; // a comment (keep-alive)
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
  }
}

export interface ApiErrorBody {
  message: string;
  type?: string | null;
  code?: string | null;
  param?: string | null;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

/** One event of `POST /v1/conversations/{id}/messages` with `stream: true`. */
export type MessageStreamEvent =
  | { type: "started"; userMessageId: string; model: string }
  | { type: "delta"; text: string }
  | {
      type: "done";
      userMessageId: string;
      assistantMessageId: string;
      finishReason: string | null;
      usage: Usage | null;
    }
  | { type: "error"; error: ApiErrorBody }
  | { type: "end" }
  | { type: "unknown" };

export function parseMessageEvent(data: string): MessageStreamEvent {
  if (data === "[DONE]") return { type: "end" };
  let value: unknown;
  try {
    value = JSON.parse(data);
  } catch {
    return { type: "unknown" };
  }
  if (typeof value !== "object" || value === null) return { type: "unknown" };
  const v = value as Record<string, unknown>;
  if (typeof v.error === "object" && v.error !== null) {
    const e = v.error as Record<string, unknown>;
    return {
      type: "error",
      error: {
        message: typeof e.message === "string" ? e.message : "The reply failed.",
        type: typeof e.type === "string" ? e.type : null,
        code: typeof e.code === "string" ? e.code : null,
      },
    };
  }
  switch (v.type) {
    case "message.started":
      return { type: "started", userMessageId: String(v.user_message_id ?? ""), model: String(v.model ?? "") };
    case "message.delta":
      return { type: "delta", text: typeof v.delta === "string" ? v.delta : "" };
    case "message.done":
      return {
        type: "done",
        userMessageId: String(v.user_message_id ?? ""),
        assistantMessageId: String(v.assistant_message_id ?? ""),
        finishReason: typeof v.finish_reason === "string" ? v.finish_reason : null,
        usage: (v.usage as Usage | undefined) ?? null,
      };
    default:
      return { type: "unknown" };
  }
}
