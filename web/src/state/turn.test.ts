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

  it("shows a regenerated reply in place of the one it replaces, under its stored question", () => {
    const stored = [msg("u0", "user", "first"), msg("a0", "assistant", "old reply")];
    let t = newTurn("t1", "first", { question: "u0", reply: "a0" });
    expect(t.userMessageId).toBe("u0");
    const ids = (turns = [t]) => shownMessages(stored, turns).map((s) => (s.kind === "stored" ? s.message.id : s.kind));
    expect(ids()).toEqual(["u0", "turn-reply"]);
    t = applyEvent(t, { type: "started", userMessageId: "u0", model: "m" });
    t = applyEvent(t, { type: "delta", text: "new reply" });
    expect(ids([t])).toEqual(["u0", "turn-reply"]);
    // A list fetched once the new reply is stored holds it (and no longer the old one): shown once.
    t = applyEvent(t, { type: "done", userMessageId: "u0", assistantMessageId: "a1", finishReason: "stop", usage: null });
    const after = [msg("u0", "user", "first"), msg("a1", "assistant", "new reply")];
    expect(shownMessages(after, [t]).map((s) => (s.kind === "stored" ? s.message.id : s.kind))).toEqual(["u0", "turn-reply"]);
  });

  it("keeps the old reply when regenerating failed before anything came", () => {
    const stored = [msg("u0", "user", "first"), msg("a0", "assistant", "old reply")];
    const t = fail(newTurn("t1", "first", { question: "u0", reply: "a0" }), "A reply is still streaming.");
    expect(shownMessages(stored, [t]).map((s) => (s.kind === "stored" ? s.message.id : s.kind))).toEqual(["u0", "a0", "turn-reply"]);
  });
});
