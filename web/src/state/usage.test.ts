import { describe, expect, it } from "vitest";
import type { UsageRow } from "../api/client";
import { lastDays, perDay, totalsBy } from "./usage";

const row = (date: string, model: string, key: string | null, p: number, c: number): UsageRow => ({
  date, model, api_key_id: key, requests: 1, prompt_tokens: p, completion_tokens: c, total_tokens: p + c,
});

describe("usage", () => {
  it("has one bar per day, zero on days without use", () => {
    const days = perDay([row("2026-03-02", "m", null, 5, 7), row("2026-03-02", "m", "k", 1, 1)], "2026-03-01", "2026-03-03");
    expect(days).toEqual([
      { date: "2026-03-01", prompt: 0, completion: 0 },
      { date: "2026-03-02", prompt: 6, completion: 8 },
      { date: "2026-03-03", prompt: 0, completion: 0 },
    ]);
  });

  it("sums per model and per key, largest first", () => {
    const rows = [row("d", "small", "k1", 1, 1), row("d", "big", "k1", 10, 10), row("d", "small", null, 3, 3)];
    expect(totalsBy(rows, "model")).toEqual([{ key: "big", requests: 1, tokens: 20 }, { key: "small", requests: 2, tokens: 8 }]);
    expect(totalsBy(rows, "api_key_id").map((t) => t.key)).toEqual(["k1", ""]);
  });

  it("spans the last N days, inclusive", () => {
    expect(lastDays(30, new Date("2026-03-31T12:00:00Z"))).toEqual({ start: "2026-03-02", end: "2026-03-31" });
  });
});
