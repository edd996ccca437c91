import { describe, expect, it } from "vitest";
import { parseStored } from "./session";

describe("parseStored", () => {
  const now = 1_000_000;
  it("restores a session whose token is still valid", () => {
    const s = { token: "t", email: "a@example.com", expiresAt: now + 60_000 };
    expect(parseStored(JSON.stringify(s), now)).toEqual(s);
  });

  it("drops an expired (or nearly expired) token and anything malformed", () => {
    expect(parseStored(JSON.stringify({ token: "t", email: "e", expiresAt: now + 1000 }), now)).toBeNull();
    expect(parseStored("{", now)).toBeNull();
    expect(parseStored(JSON.stringify({ token: 1 }), now)).toBeNull();
    expect(parseStored(null, now)).toBeNull();
  });
});
