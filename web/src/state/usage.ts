// Usage rows (per day, model and key) summed the ways the usage page shows them (unit-tested).

import type { UsageRow } from "../api/client";

export interface DayTotal {
  date: string;
  prompt: number;
  completion: number;
}

/** One entry per day from start to end (inclusive, UTC dates), days without use at zero. */
export function perDay(rows: UsageRow[], start: string, end: string): DayTotal[] {
  const byDate = new Map<string, DayTotal>();
  for (let d = new Date(`${start}T00:00:00Z`); d <= new Date(`${end}T00:00:00Z`); d.setUTCDate(d.getUTCDate() + 1)) {
    const date = d.toISOString().slice(0, 10);
    byDate.set(date, { date, prompt: 0, completion: 0 });
  }
  for (const r of rows) {
    const day = byDate.get(r.date);
    if (!day) continue;
    day.prompt += r.prompt_tokens;
    day.completion += r.completion_tokens;
  }
  return [...byDate.values()];
}

export interface GroupTotal {
  key: string;
  requests: number;
  tokens: number;
}

/** Totals per model or per API key (null key: the signed-in web session), largest first. */
export function totalsBy(rows: UsageRow[], by: "model" | "api_key_id"): GroupTotal[] {
  const out = new Map<string, GroupTotal>();
  for (const r of rows) {
    const key = (by === "model" ? r.model : r.api_key_id) ?? "";
    const t = out.get(key) ?? { key, requests: 0, tokens: 0 };
    t.requests += r.requests;
    t.tokens += r.total_tokens;
    out.set(key, t);
  }
  return [...out.values()].sort((a, b) => b.tokens - a.tokens);
}

export function isoDay(date: Date): string {
  return date.toISOString().slice(0, 10);
}

export function lastDays(days: number, now = new Date()): { start: string; end: string } {
  const end = isoDay(now);
  const start = new Date(now);
  start.setUTCDate(start.getUTCDate() - (days - 1));
  return { start: isoDay(start), end };
}
