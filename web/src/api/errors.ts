// Errors as a person reads them: every failure the app shows goes through describeError, never a raw JSON body.

import type { ApiErrorBody } from "./sse";

export type ErrorKind =
  | "network"
  | "expired"
  | "rate_limit"
  | "quota"
  | "busy"
  | "timeout"
  | "too_long"
  | "not_found"
  | "conflict"
  | "invalid"
  | "server";

export class ApiError extends Error {
  constructor(
    readonly kind: ErrorKind,
    message: string,
    readonly status = 0,
    readonly retryAfterSeconds: number | null = null,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

/** "in 12 seconds", "in 3 minutes", "in about 2 hours". */
export function inHowLong(seconds: number): string {
  const s = Math.max(1, Math.ceil(seconds));
  if (s < 60) return `in ${s} second${s === 1 ? "" : "s"}`;
  const m = Math.ceil(s / 60);
  if (m < 60) return `in ${m} minute${m === 1 ? "" : "s"}`;
  const h = Math.round(m / 60);
  return `in about ${h} hour${h === 1 ? "" : "s"}`;
}

/** Seconds to wait from Retry-After (seconds or an HTTP date) or OpenAI's x-ratelimit-reset-* ("1m30s", "250ms"). */
export function retryAfter(headers: Pick<Headers, "get">, now = Date.now()): number | null {
  const value = headers.get("retry-after");
  if (value) {
    const n = Number(value);
    if (Number.isFinite(n)) return Math.max(0, n);
    const when = Date.parse(value);
    if (!Number.isNaN(when)) return Math.max(0, (when - now) / 1000);
  }
  let longest: number | null = null;
  for (const name of ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]) {
    const d = parseDuration(headers.get(name));
    if (d !== null && (longest === null || d > longest)) longest = d;
  }
  return longest;
}

export function parseDuration(text: string | null): number | null {
  if (!text) return null;
  const re = /(\d+(?:\.\d+)?)(ms|h|m|s)/g;
  let total = 0;
  let matched = false;
  for (const m of text.matchAll(re)) {
    matched = true;
    const n = Number(m[1]);
    total += m[2] === "ms" ? n / 1000 : m[2] === "s" ? n : m[2] === "m" ? n * 60 : n * 3600;
  }
  return matched ? total : null;
}

/** The readable error for an HTTP status and OpenAI's error object (either may be missing). */
export function describeError(
  status: number,
  body: ApiErrorBody | null,
  retryAfterSeconds: number | null = null,
  context: "auth" | "login" | "signup" | "default" = "default",
): ApiError {
  const code = body?.code ?? "";
  const type = body?.type ?? "";
  const serverText = body?.message?.trim() ?? "";
  if (status === 401) {
    if (context === "login") return new ApiError("invalid", "Wrong email or password.", status);
    return new ApiError("expired", "Your session has ended. Please log in again.", status);
  }
  if (status === 429 || code === "rate_limit_exceeded" || code === "insufficient_quota") {
    if (code === "insufficient_quota" || type === "insufficient_quota") {
      return new ApiError(
        "quota",
        "You have used all the tokens your quota allows for this period. See the Usage page for when it renews.",
        status,
      );
    }
    const when = retryAfterSeconds !== null ? ` Try again ${inHowLong(retryAfterSeconds)}.` : " Try again shortly.";
    return new ApiError("rate_limit", `You are sending requests too fast.${when}`, status, retryAfterSeconds);
  }
  if (code === "context_length_exceeded") {
    return new ApiError("too_long", "This message is too long for the model. Shorten it, or start a new chat.", status);
  }
  if (status === 503 || code === "service_unavailable") {
    return new ApiError("busy", "The model is busy or unavailable right now. Please try again in a moment.", status);
  }
  if (status === 504 || code === "timeout") {
    return new ApiError("timeout", "The model took too long to answer. Please try again.", status);
  }
  if (status === 404) {
    if (code === "model_not_found") return new ApiError("not_found", "That model is not available.", status);
    return new ApiError("not_found", "Not found: it may have been deleted.", status);
  }
  if (status === 409) {
    if (context === "signup") {
      return new ApiError("conflict", "An account with this email already exists. Log in instead.", status);
    }
    return new ApiError("conflict", serverText || "That conflicts with what is already there.", status);
  }
  if (status === 413) return new ApiError("too_long", "That is too large to send.", status);
  if (status >= 400 && status < 500) {
    // OpenAI-style messages are sentences written for people ("... must be at least 8 characters: 'password'").
    return new ApiError("invalid", readable(serverText) || "The request was not accepted.", status);
  }
  return new ApiError("server", "Something went wrong on the server. Please try again.", status);
}

/** Pydantic's wording, made friendlier for the fields a person types. */
function readable(text: string): string {
  const m = /^(.*): '([a-z_.[\]0-9]+)'$/i.exec(text);
  if (!m) return text;
  const field = m[2].split(".").pop() ?? m[2];
  const what = m[1].replace(/^String should have /, "should have ").replace(/^Value error, /, "");
  return `${field[0].toUpperCase()}${field.slice(1).replace(/_/g, " ")} ${what.charAt(0).toLowerCase()}${what.slice(1)}.`
    .replace(/\.\.$/, ".");
}

export function networkError(): ApiError {
  return new ApiError("network", "Cannot reach the server. Check your connection and try again.");
}

export function asApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof TypeError) return networkError(); // what fetch throws when the network is gone
  return new ApiError("server", "Something went wrong. Please try again.");
}
