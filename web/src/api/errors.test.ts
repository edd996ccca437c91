import { describe, expect, it } from "vitest";
import { asApiError, describeError, inHowLong, parseDuration, retryAfter } from "./errors";

const headers = (h: Record<string, string>) => new Headers(h);

describe("describeError", () => {
  it("says when to retry after a rate limit", () => {
    const err = describeError(429, { message: "Rate limit reached", code: "rate_limit_exceeded", type: "rate_limit_error" }, 42);
    expect(err.kind).toBe("rate_limit");
    expect(err.message).toBe("You are sending requests too fast. Try again in 42 seconds.");
    expect(err.retryAfterSeconds).toBe(42);
  });

  it("tells an exhausted quota apart from a rate limit", () => {
    const err = describeError(429, { message: "quota", code: "insufficient_quota", type: "insufficient_quota" });
    expect(err.kind).toBe("quota");
    expect(err.message).toMatch(/quota/);
  });

  it("calls a 503 a busy model and a 504 a slow one", () => {
    expect(describeError(503, { message: "The inference service is temporarily unavailable.", code: "service_unavailable" }).kind).toBe("busy");
    expect(describeError(504, null).kind).toBe("timeout");
  });

  it("sends an expired session back to login, but a failed login is a wrong password", () => {
    expect(describeError(401, { message: "Invalid token" }).kind).toBe("expired");
    expect(describeError(401, { message: "Invalid email or password" }, null, "login").message).toBe("Wrong email or password.");
  });

  it("explains a taken email on sign up", () => {
    expect(describeError(409, { message: "exists" }, null, "signup").message).toMatch(/already exists/);
  });

  it("turns validation wording into a sentence, never JSON", () => {
    const err = describeError(400, { message: "String should have at least 8 characters: 'password'", param: "password" });
    expect(err.message).toBe("Password should have at least 8 characters.");
    expect(err.message).not.toMatch(/[{}]/);
  });

  it("hides server errors' text", () => {
    expect(describeError(500, { message: "Traceback ..." }).message).toBe("Something went wrong on the server. Please try again.");
  });

  it("names a context too long for the model", () => {
    expect(describeError(400, { message: "too long", code: "context_length_exceeded" }).kind).toBe("too_long");
  });
});

describe("retry times", () => {
  it("reads Retry-After in seconds or as a date", () => {
    expect(retryAfter(headers({ "retry-after": "3" }))).toBe(3);
    const now = Date.parse("2026-01-01T00:00:00Z");
    expect(retryAfter(headers({ "retry-after": "Thu, 01 Jan 2026 00:01:00 GMT" }), now)).toBe(60);
  });

  it("falls back to the longest x-ratelimit-reset-*", () => {
    expect(retryAfter(headers({ "x-ratelimit-reset-requests": "1.5s", "x-ratelimit-reset-tokens": "1m30s" }))).toBe(90);
    expect(retryAfter(headers({}))).toBeNull();
    expect(parseDuration("250ms")).toBe(0.25);
    expect(parseDuration("garbage")).toBeNull();
  });

  it("words a wait as a person would", () => {
    expect(inHowLong(1)).toBe("in 1 second");
    expect(inHowLong(0.2)).toBe("in 1 second");
    expect(inHowLong(59)).toBe("in 59 seconds");
    expect(inHowLong(61)).toBe("in 2 minutes");
    expect(inHowLong(7200)).toBe("in about 2 hours");
  });
});

describe("asApiError", () => {
  it("calls a failed fetch a lost network", () => {
    expect(asApiError(new TypeError("Failed to fetch")).kind).toBe("network");
  });
});
