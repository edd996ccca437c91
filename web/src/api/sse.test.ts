import { describe, expect, it } from "vitest";
import { parseMessageEvent, SseParser } from "./sse";

const STREAM =
  'data: {"type":"message.started","user_message_id":"u1","model":"m"}\n\n' +
  'data: {"type":"message.delta","delta":"The capital"}\n\n' +
  'data: {"type":"message.delta","delta":" of France is Paris."}\n\n' +
  'data: {"type":"message.done","user_message_id":"u1","assistant_message_id":"a1","finish_reason":"stop",' +
  '"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}\n\n' +
  "data: [DONE]\n\n";

function parseAll(chunks: string[]) {
  const p = new SseParser();
  return chunks.flatMap((c) => p.feed(c)).map((e) => parseMessageEvent(e.data));
}

describe("SseParser", () => {
  it("reads the gateway's message stream in one piece", () => {
    const events = parseAll([STREAM]);
    expect(events.map((e) => e.type)).toEqual(["started", "delta", "delta", "done", "end"]);
    const text = events.flatMap((e) => (e.type === "delta" ? [e.text] : [])).join("");
    expect(text).toBe("The capital of France is Paris.");
  });

  it("gives the same events however the bytes are split", () => {
    const whole = parseAll([STREAM]);
    for (const size of [1, 2, 3, 7, 13]) {
      const chunks: string[] = [];
      for (let i = 0; i < STREAM.length; i += size) chunks.push(STREAM.slice(i, i + size));
      expect(parseAll(chunks)).toEqual(whole);
    }
  });

  it("handles CRLF and CR line ends, split between chunks too", () => {
    const crlf = STREAM.replace(/\n/g, "\r\n");
    expect(parseAll([crlf])).toEqual(parseAll([STREAM]));
    const cr = STREAM.replace(/\n/g, "\r");
    expect(parseAll([cr])).toEqual(parseAll([STREAM]));
    const at = crlf.indexOf("\r\n") + 1; // between \r and \n
    expect(parseAll([crlf.slice(0, at), crlf.slice(at)])).toEqual(parseAll([STREAM]));
  });

  it("joins multi-line data, skips comments and keeps the event name", () => {
    const p = new SseParser();
    expect(p.feed(": keep-alive\n\nevent: note\ndata: a\ndata: b\n\n")).toEqual([{ event: "note", data: "a\nb" }]);
  });

  it("drops an event the stream cut before its blank line", () => {
    const p = new SseParser();
    expect(p.feed('data: {"type":"message.delta","delta":"x"}')).toEqual([]);
    expect(p.end()).toEqual([]);
  });

  it("keeps text with newlines and unicode as sent", () => {
    const events = parseAll(['data: {"type":"message.delta","delta":"a\\nb ü 🇫🇷"}\n\n']);
    expect(events).toEqual([{ type: "delta", text: "a\nb ü 🇫🇷" }]);
  });
});

describe("parseMessageEvent", () => {
  it("turns an error event into its message, never the raw JSON", () => {
    const e = parseMessageEvent('{"error":{"message":"The inference service is temporarily unavailable.","type":"service_unavailable","code":"service_unavailable","param":null}}');
    expect(e).toEqual({
      type: "error",
      error: { message: "The inference service is temporarily unavailable.", type: "service_unavailable", code: "service_unavailable" },
    });
  });

  it("ignores what it does not know", () => {
    expect(parseMessageEvent("not json")).toEqual({ type: "unknown" });
    expect(parseMessageEvent('{"type":"message.future"}')).toEqual({ type: "unknown" });
    expect(parseMessageEvent("42")).toEqual({ type: "unknown" });
  });
});
