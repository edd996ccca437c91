import { describe, expect, it } from "vitest";
import type { Message } from "../api/client";
import { ENDING_TEXT, messageEnding, turnEnding } from "./ending";
import { applyEvent, fail, newTurn, settledMessages, stop, type Turn } from "./turn";

const stored = (status: Message["status"], finish_reason: string | null, role: Message["role"] = "assistant"): Message => ({
  id: "a1", role, content: "Once upon a time", status, model: "m", finish_reason, usage: null, created_at: 1,
});

function streamed(finishReason: string | null): Turn {
  let t = applyEvent(newTurn("t1", "q"), { type: "started", userMessageId: "u1", model: "m" });
  t = applyEvent(t, { type: "delta", text: "Once upon a time" });
  return applyEvent(t, { type: "done", userMessageId: "u1", assistantMessageId: "a1", finishReason, usage: null });
}

describe("the ending of a reply loaded from history", () => {
  it("says nothing of a reply that ended normally", () => {
    expect(messageEnding(stored("complete", "stop"))).toBeNull();
    expect(messageEnding(stored("complete", null))).toBeNull();
    expect(messageEnding(stored("complete", "tool_calls"))).toBeNull();
  });

  it("tells of a reply cut off at the length limit", () => {
    expect(messageEnding(stored("complete", "length"))).toBe("length");
  });

  it("tells of a reply stored as incomplete (stopped, or the stream failed), whatever its finish reason", () => {
    expect(messageEnding(stored("incomplete", "abort"))).toBe("stopped");
    expect(messageEnding(stored("incomplete", "error"))).toBe("stopped");
    expect(messageEnding(stored("incomplete", null))).toBe("stopped");
    expect(messageEnding(stored("incomplete", "length"))).toBe("stopped");
  });

  it("takes a reply cut short as stopped even when its status says complete", () => {
    expect(messageEnding(stored("complete", "abort"))).toBe("stopped");
  });

  it("says nothing under a user's message", () => {
    expect(messageEnding(stored("incomplete", "length", "user"))).toBeNull();
  });
});

describe("the ending of a reply streamed just now", () => {
  it("comes from the done event's finish reason", () => {
    expect(turnEnding(streamed("stop"))).toBeNull();
    expect(turnEnding(streamed(null))).toBeNull();
    expect(turnEnding(streamed("length"))).toBe("length");
    expect(turnEnding(streamed("abort"))).toBe("stopped");
  });

  it("is none while the reply is coming", () => {
    const t = newTurn("t1", "q");
    expect(turnEnding(t)).toBeNull();
    expect(turnEnding(applyEvent(t, { type: "delta", text: "Once" }))).toBeNull();
  });

  it("is stopped when the person pressed Stop", () => {
    expect(turnEnding(stop(applyEvent(newTurn("t1", "q"), { type: "delta", text: "Once" })))).toBe("stopped");
  });

  it("is stopped when the stream failed after some text, none when nothing came (the error says it all)", () => {
    const partial = applyEvent(newTurn("t1", "q"), { type: "delta", text: "Once" });
    expect(turnEnding(fail(partial, "The reply ended unexpectedly."))).toBe("stopped");
    expect(turnEnding(applyEvent(partial, { type: "error", error: { message: "The model failed." } }))).toBe("stopped");
    expect(turnEnding(fail(newTurn("t1", "q"), "Cannot reach the server."))).toBeNull();
  });
});

describe("a streamed reply once settled among the stored messages", () => {
  const settled = (t: Turn) => settledMessages(t, 1).reply;

  it("keeps its ending, as the server stored it", () => {
    expect(messageEnding(settled(streamed("stop")))).toBeNull();
    expect(settled(streamed("length"))).toMatchObject({ status: "complete", finish_reason: "length" });
    expect(messageEnding(settled(streamed("length")))).toBe("length");
    expect(settled(streamed("abort")).status).toBe("incomplete");
    const stopped = settled(stop(applyEvent(newTurn("t1", "q"), { type: "delta", text: "Once" })));
    expect(stopped.status).toBe("incomplete");
    expect(messageEnding(stopped)).toBe("stopped");
  });
});

describe("the notes' texts", () => {
  it("are the ones the person reads", () => {
    expect(ENDING_TEXT.length).toBe("The reply was cut off at the length limit.");
    expect(ENDING_TEXT.stopped).toBe("The reply was stopped before it was complete.");
  });
});
