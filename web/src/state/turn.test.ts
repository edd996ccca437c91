import { describe, expect, it } from "vitest";
import type { Message } from "../api/client";
import { applyEvent, fail, isLive, newTurn, shownMessages, stop } from "./turn";

const msg = (id: string, role: "user" | "assistant", content: string, status: "complete" | "incomplete" = "complete"): Message => ({
  id, role, content, status, model: null, finish_reason: null, usage: null, created_at: 1,
});

describe("a turn", () => {
  it("goes from sending to streaming to done, gathering the reply", () => {
    let t = newTurn("t1", "What is the capital of France?");
    expect(t.status).toBe("sending");
    t = applyEvent(t, { type: "started", userMessageId: "u1", model: "m" });
    expect(t.status).toBe("streaming");
    t = applyEvent(t, { type: "delta", text: "The capital of France is " });
    t = applyEvent(t, { type: "delta", text: "Paris." });
    t = applyEvent(t, { type: "done", userMessageId: "u1", assistantMessageId: "a1", finishReason: "stop", usage: null });
    expect(t).toMatchObject({ status: "done", reply: "The capital of France is Paris.", userMessageId: "u1", assistantMessageId: "a1" });
    expect(isLive(t)).toBe(false);
  });

  it("keeps what was received when stopped, and ignores later events", () => {
    let t = applyEvent(newTurn("t1", "q"), { type: "delta", text: "Once upon" });
    t = stop(t);
    expect(t.status).toBe("stopped");
    t = applyEvent(t, { type: "delta", text: " a time" });
    expect(t.reply).toBe("Once upon");
    expect(fail(t, "x")).toBe(t);
  });

  it("fails with the error's message", () => {
    const t = applyEvent(newTurn("t1", "q"), { type: "error", error: { message: "The model is busy." } });
    expect(t).toMatchObject({ status: "failed", error: "The model is busy." });
  });
});

describe("shownMessages", () => {
  it("shows stored messages, then the turns", () => {
    const t = newTurn("t1", "second");
    const shown = shownMessages([msg("u0", "user", "first"), msg("a0", "assistant", "reply")], [t]);
    expect(shown.map((s) => s.kind)).toEqual(["stored", "stored", "turn-user", "turn-reply"]);
  });

  it("does not show a live turn's stored user message (and partial reply) twice", () => {
    const t = applyEvent(newTurn("t1", "second"), { type: "started", userMessageId: "u1", model: "m" });
    const stored = [msg("u0", "user", "first"), msg("a0", "assistant", "reply"), msg("u1", "user", "second"), msg("a1", "assistant", "par", "incomplete")];
    const shown = shownMessages(stored, [t]);
    expect(shown.map((s) => (s.kind === "stored" ? s.message.id : s.kind))).toEqual(["u0", "a0", "turn-user", "turn-reply"]);
  });
});
