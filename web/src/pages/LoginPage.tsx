import { Field, Input, Label } from "@headlessui/react";
import { useState, type FormEvent } from "react";
import { Navigate, useNavigate, useSearchParams } from "react-router";
import { api } from "../api/client";
import { asApiError } from "../api/errors";
import { ErrorNotice, InfoNotice } from "../components/Notice";
import { endReason, session, start } from "../state/session";
import { useStore } from "../state/store";

const MIN_PASSWORD = 8;

/** Where to go after logging in: only a path of this app, never another site. */
export function safeNext(next: string | null): string {
  return next && next.startsWith("/") && !next.startsWith("//") && !next.startsWith("/\\") ? next : "/";
}

export function LoginPage() {
  const s = useStore(session);
  const reason = useStore(endReason);
  const [params] = useSearchParams();
  const navigate = useNavigate();
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState<"login" | "signup" | null>(null);
  const next = safeNext(params.get("next"));

  if (s && !busy) return <Navigate to={next} replace />;

  async function submit(e: FormEvent<HTMLFormElement>) {
    e.preventDefault();
    const submitter = (e.nativeEvent as SubmitEvent).submitter as HTMLButtonElement | null;
    const mode = submitter?.value === "signup" ? "signup" : "login";
    const form = new FormData(e.currentTarget);
    const email = String(form.get("email") ?? "").trim();
    const password = String(form.get("password") ?? "");
    if (!email || !password) {
      setError("Enter your email and a password.");
      return;
    }
    if (mode === "signup" && password.length < MIN_PASSWORD) {
      setError(`Choose a password of at least ${MIN_PASSWORD} characters.`);
      return;
    }
    setError(null);
    setBusy(mode);
    try {
      if (mode === "signup") await api.signup(email, password);
      const token = await api.login(email, password);
      start(token.access_token, email, token.expires_in);
      navigate(next, { replace: true });
    } catch (err) {
      setError(asApiError(err).message);
    } finally {
      setBusy(null);
    }
  }

  const input =
    "w-full rounded-lg border border-zinc-300 bg-white px-3 py-2 outline-none focus:border-teal-600 focus:ring-2 focus:ring-teal-600/20 dark:border-zinc-700 dark:bg-zinc-900";
  return (
    <main className="flex min-h-dvh items-center justify-center bg-zinc-50 px-4 dark:bg-zinc-950">
      <div className="w-full max-w-sm">
        <h1 className="mb-1 text-center text-2xl font-semibold tracking-tight">chatplane</h1>
        <p className="mb-6 text-center text-sm text-zinc-500">Log in, or sign up with a new email.</p>
        <form onSubmit={submit} noValidate className="flex flex-col gap-4 rounded-2xl border border-zinc-200 bg-white p-6 shadow-sm dark:border-zinc-800 dark:bg-zinc-900">
          {reason === "expired" && <InfoNotice>Your session has ended. Please log in again.</InfoNotice>}
          {reason === "logout" && <InfoNotice>You are logged out.</InfoNotice>}
          {error && <ErrorNotice>{error}</ErrorNotice>}
          <Field className="flex flex-col gap-1">
            <Label className="text-sm font-medium">Email</Label>
            <Input name="email" type="email" autoComplete="username" required autoFocus className={input} />
          </Field>
          <Field className="flex flex-col gap-1">
            <Label className="text-sm font-medium">Password</Label>
            <Input name="password" type="password" autoComplete="current-password" required minLength={1} className={input} />
          </Field>
          <div className="flex flex-col gap-2 pt-1">
            <button type="submit" value="login" disabled={busy !== null} className="rounded-lg bg-teal-600 px-3 py-2 font-medium text-white hover:bg-teal-700 disabled:opacity-50">
              {busy === "login" ? "Logging in…" : "Log in"}
            </button>
            <button type="submit" value="signup" disabled={busy !== null} className="rounded-lg border border-zinc-300 px-3 py-2 font-medium hover:bg-zinc-100 disabled:opacity-50 dark:border-zinc-700 dark:hover:bg-zinc-800">
              {busy === "signup" ? "Signing up…" : "Sign up"}
            </button>
          </div>
          <p className="text-xs text-zinc-500">Sign up needs a password of at least {MIN_PASSWORD} characters.</p>
        </form>
      </div>
    </main>
  );
}
