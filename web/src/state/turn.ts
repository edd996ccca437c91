// A reply being received: the pure state machine of one send (unit-tested), fed by the stream's events.

import type { Message } from "../api/client";
import type { MessageStreamEvent } from "../api/sse";
import { turnEnding } from "./ending";

export type TurnStatus = "sending" | "streaming" | "done" | "stopped" | "failed";

export interface Turn {
  localId: string;
  userText: string;
  reply: string;
  status: TurnStatus;
  model: string | null;
  userMessageId: string | null;
  assistantMessageId: string | null;
  finishReason: string | null;
  error: string | null;
  /** A regenerated reply: the id of the stored reply it replaces (its question is the stored userMessageId). */
  replaces: string | null;
}

/** A new turn; `regenerate` names the stored question answered again and the stored reply the new one replaces. */
export function newTurn(localId: string, userText: string, regenerate?: { question: string; reply: string }): Turn {
  return {
    localId,
    userText,
    reply: "",
    status: "sending",
    model: null,
    userMessageId: regenerate?.question ?? null,
    assistantMessageId: null,
    finishReason: null,
    error: null,
    replaces: regenerate?.reply ?? null,
  };
}

export function isLive(turn: Turn): boolean {
  return turn.status === "sending" || turn.status === "streaming";
}

export function applyEvent(turn: Turn, event: MessageStreamEvent): Turn {
  if (!isLive(turn)) return turn; // nothing changes a finished turn (late events after Stop)
  switch (event.type) {
    case "started":
      return { ...turn, status: "streaming", userMessageId: event.userMessageId || null, model: event.model || null };
    case "delta":
      return event.text ? { ...turn, status: "streaming", reply: turn.reply + event.text } : turn;
    case "done":
      return {
        ...turn,
        status: "done",
        userMessageId: event.userMessageId || turn.userMessageId,
        assistantMessageId: event.assistantMessageId || null,
        finishReason: event.finishReason,
      };
    case "error":
      return { ...turn, status: "failed", error: event.error.message };
    default:
      return turn;
  }
}

export function stop(turn: Turn): Turn {
  return isLive(turn) ? { ...turn, status: "stopped" } : turn;
}

export function fail(turn: Turn, message: string): Turn {
  return isLive(turn) ? { ...turn, status: "failed", error: message } : turn;
}

/** A finished (done or stopped) turn's question and reply as the server stored them: a reply cut short is incomplete. */
export function settledMessages(turn: Turn, now: number): { user: Message; reply: Message } {
  const user: Message = {
    id: turn.userMessageId ?? `local-user-${turn.localId}`,
    role: "user",
    content: turn.userText,
    status: "complete",
    model: null,
    finish_reason: null,
    usage: null,
    created_at: now,
  };
  const reply: Message = {
    id: turn.assistantMessageId ?? `local-reply-${turn.localId}`,
    role: "assistant",
    content: turn.reply,
    status: turnEnding(turn) === "stopped" ? "incomplete" : "complete",
    model: turn.model,
    finish_reason: turn.finishReason,
    usage: null,
    created_at: now,
  };
  return { user, reply };
}

/**
 * What the conversation shows: the stored messages, then the turns of this page's life that the stored list does
 * not hold yet. A turn's user message is stored as soon as the reply starts, so a list fetched meanwhile holds it:
 * it is not shown twice, nor the stored (partial) reply that may follow it. A regenerated reply takes the place of
 * the reply it replaces, after its stored question; a failed one that never started leaves the old reply shown.
 */
export type Shown =
  | { kind: "stored"; message: Message }
  | { kind: "turn-user"; turn: Turn }
  | { kind: "turn-reply"; turn: Turn };

export function shownMessages(stored: Message[], turns: Turn[]): Shown[] {
  const out: Shown[] = [];
  const covered = new Set<string>();
  for (const t of turns) {
    if (t.replaces) {
      if (t.status !== "failed" || t.reply) covered.add(t.replaces);
    } else if (t.userMessageId) covered.add(t.userMessageId);
    if (t.assistantMessageId) covered.add(t.assistantMessageId);
  }
  let skipReply = false;
  for (const m of stored) {
    if (covered.has(m.id)) {
      skipReply = m.role === "user";
      continue;
    }
    if (skipReply && m.role === "assistant") {
      skipReply = false;
      continue;
    }
    skipReply = false;
    out.push({ kind: "stored", message: m });
  }
  for (const t of turns) {
    if (!t.replaces) out.push({ kind: "turn-user", turn: t });
    out.push({ kind: "turn-reply", turn: t });
  }
  return out;
}
