// How a reply ended, when the person must be told: cut off at the length limit, or stopped before it was complete.
// One decision for a reply just streamed (its turn) and for one loaded from history (its stored message).

import type { Message } from "../api/client";
import type { Turn } from "./turn";

export type Ending = "length" | "stopped" | null; // null: the reply ended normally (or is still coming)

export const ENDING_TEXT: Record<Exclude<Ending, null>, string> = {
  length: "The reply was cut off at the length limit.",
  stopped: "The reply was stopped before it was complete.",
};

// The finish reasons of a reply cut short; the conversation service stores such a reply as incomplete.
const CUT_SHORT = new Set(["abort", "error"]);

function ending(incomplete: boolean, finishReason: string | null): Ending {
  if (incomplete || (finishReason !== null && CUT_SHORT.has(finishReason))) return "stopped";
  return finishReason === "length" ? "length" : null;
}

export function messageEnding(message: Message): Ending {
  if (message.role !== "assistant") return null;
  return ending(message.status === "incomplete", message.finish_reason);
}

/** A live reply has no ending yet; a failed one that showed some text was stopped (its error is shown as well). */
export function turnEnding(turn: Turn): Ending {
  switch (turn.status) {
    case "done":
      return ending(false, turn.finishReason);
    case "stopped":
      return "stopped";
    case "failed":
      return turn.reply ? "stopped" : null;
    default:
      return null;
  }
}
