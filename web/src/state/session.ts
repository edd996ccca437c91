// The signed-in session: the access token lives in memory and in sessionStorage (this tab only, gone when the tab
// closes; never localStorage, which every tab and every later visit would share). It expires when the token does:
// a timer, or any 401 from the API, ends it and the app goes back to the login page with a notice.

import { Store } from "./store";

export interface Session {
  token: string;
  email: string;
  expiresAt: number; // ms since the epoch
}

export type EndReason = "expired" | "logout" | null;

const KEY = "chatplane.session";
export const session = new Store<Session | null>(null);
export const endReason = new Store<EndReason>(null);
let timer: ReturnType<typeof setTimeout> | undefined;

function storage(): Storage | null {
  try {
    return typeof sessionStorage === "undefined" ? null : sessionStorage;
  } catch {
    return null; // storage disabled: the session lasts as long as the page
  }
}

export function parseStored(text: string | null, now = Date.now()): Session | null {
  if (!text) return null;
  try {
    const v = JSON.parse(text) as Partial<Session>;
    if (typeof v.token !== "string" || typeof v.expiresAt !== "number" || typeof v.email !== "string") return null;
    return v.expiresAt > now + 5_000 ? (v as Session) : null;
  } catch {
    return null;
  }
}

function arm(s: Session): void {
  clearTimeout(timer);
  // setTimeout holds at most 2^31-1 ms; a token for longer than ~24 days re-arms on the next load.
  timer = setTimeout(() => end("expired"), Math.min(Math.max(0, s.expiresAt - Date.now()), 2 ** 31 - 1));
}

export function start(token: string, email: string, expiresInSeconds: number): void {
  const s = { token, email, expiresAt: Date.now() + expiresInSeconds * 1000 };
  storage()?.setItem(KEY, JSON.stringify(s));
  endReason.set(null);
  session.set(s);
  arm(s);
}

export function end(reason: Exclude<EndReason, null>): void {
  clearTimeout(timer);
  storage()?.removeItem(KEY);
  if (session.get() !== null) endReason.set(reason);
  session.set(null);
}

/** On page load: the session of this tab, if its token is still valid. */
export function restore(): void {
  const s = parseStored(storage()?.getItem(KEY) ?? null);
  if (s) {
    session.set(s);
    arm(s);
  } else {
    storage()?.removeItem(KEY);
  }
}
