import { describe, expect, it } from "vitest";
import type { Conversation } from "../api/client";
import { mergePage } from "./conversations";

const c = (id: string, updated: number, title = "New conversation"): Conversation => ({
  id, title, archived: false, created_at: updated, updated_at: updated,
});

describe("mergePage", () => {
  it("puts a refreshed first page on top, newest first, without duplicates", () => {
    const items = [c("b", 20), c("a", 10)];
    const merged = mergePage(items, [c("a", 30, "Capital of France"), c("b", 20)], true);
    expect(merged.map((x) => [x.id, x.title])).toEqual([["a", "Capital of France"], ["b", "New conversation"]]);
  });

  it("appends a further page after what is loaded", () => {
    const merged = mergePage([c("c", 30), c("b", 20)], [c("b", 20), c("a", 10)], false);
    expect(merged.map((x) => x.id)).toEqual(["c", "b", "a"]);
  });
});
