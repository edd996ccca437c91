import { Dialog, DialogPanel, DialogTitle, Field, Input, Label } from "@headlessui/react";
import { useEffect, useState, type FormEvent } from "react";
import { api, type ApiKey } from "../api/client";
import { asApiError } from "../api/errors";
import { CopyButton } from "../components/CopyButton";
import { formatDate } from "../components/format";
import { ErrorNotice } from "../components/Notice";

export default function KeysPage() {
  const [keys, setKeys] = useState<ApiKey[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [created, setCreated] = useState<(ApiKey & { key: string }) | null>(null);
  const [revoking, setRevoking] = useState<ApiKey | null>(null);
  const [busy, setBusy] = useState(false);

  async function load() {
    try {
      setKeys((await api.apiKeys()).data);
      setError(null);
    } catch (err) {
      setError(asApiError(err).message);
    }
  }
  useEffect(() => {
    void load();
  }, []);

  async function create(e: FormEvent<HTMLFormElement>) {
    e.preventDefault();
    const form = e.currentTarget;
    const name = String(new FormData(form).get("name") ?? "").trim();
    if (!name) {
      setError("Give the key a name, e.g. where you will use it.");
      return;
    }
    setBusy(true);
    try {
      const key = await api.createApiKey(name);
      setCreated(key);
      form.reset();
      setError(null);
      await load();
    } catch (err) {
      setError(asApiError(err).message);
    } finally {
      setBusy(false);
    }
  }

  async function revoke(key: ApiKey) {
    try {
      await api.revokeApiKey(key.id);
      setRevoking(null);
      await load();
    } catch (err) {
      setRevoking(null);
      setError(asApiError(err).message);
    }
  }

  const origin = window.location.origin;
  return (
    <div className="min-h-0 flex-1 overflow-y-auto">
      <div className="mx-auto flex max-w-3xl flex-col gap-6 px-4 py-6">
        <div>
          <h1 className="text-xl font-semibold">API keys</h1>
          <p className="mt-1 text-sm text-zinc-500">
            Use a key with any OpenAI client: base URL <code className="rounded bg-zinc-100 px-1 dark:bg-zinc-800">{origin}/v1</code>.
          </p>
        </div>
        {error && <ErrorNotice>{error}</ErrorNotice>}
        <form onSubmit={create} className="flex flex-wrap items-end gap-2">
          <Field className="flex min-w-48 flex-1 flex-col gap-1">
            <Label className="text-sm font-medium">Name</Label>
            <Input name="name" maxLength={100} placeholder="e.g. laptop" className="rounded-lg border border-zinc-300 bg-white px-3 py-2 dark:border-zinc-700 dark:bg-zinc-900" />
          </Field>
          <button type="submit" disabled={busy} className="rounded-lg bg-teal-600 px-3 py-2 font-medium text-white hover:bg-teal-700 disabled:opacity-50">
            Create key
          </button>
        </form>

        {created && (
          <section aria-labelledby="new-key" className="rounded-xl border border-teal-300 bg-teal-50 p-4 dark:border-teal-800 dark:bg-teal-950/50">
            <h2 id="new-key" className="font-semibold">Your new key “{created.name}”</h2>
            <p className="mt-1 text-sm">Copy it now: it is shown only this once.</p>
            <div className="mt-3 flex gap-2">
              <input readOnly aria-label="New API key" value={created.key} onFocus={(e) => e.currentTarget.select()}
                     className="min-w-0 flex-1 rounded-lg border border-zinc-300 bg-white px-2 py-1.5 font-mono text-sm dark:border-zinc-700 dark:bg-zinc-900" />
              <CopyButton text={created.key} label="Copy key" className="border border-zinc-300 dark:border-zinc-700" />
            </div>
            <pre className="mt-3 overflow-x-auto rounded-lg bg-white p-3 text-xs dark:bg-zinc-900">{`from openai import OpenAI
client = OpenAI(base_url="${origin}/v1", api_key="<your key>")`}</pre>
            <button type="button" onClick={() => setCreated(null)} className="mt-2 text-sm underline">I have stored it</button>
          </section>
        )}

        <section aria-labelledby="your-keys">
          <h2 id="your-keys" className="mb-2 font-semibold">Your keys</h2>
          {keys === null && !error && <p role="status" className="text-sm text-zinc-500">Loading…</p>}
          {keys?.length === 0 && <p className="text-sm text-zinc-500">No keys yet.</p>}
          {keys && keys.length > 0 && (
            <div className="overflow-x-auto">
              <table className="w-full text-left text-sm">
                <thead className="text-xs uppercase text-zinc-500">
                  <tr><th className="py-2 pr-3">Name</th><th className="pr-3">Key</th><th className="pr-3">Created</th><th className="pr-3">Last used</th><th><span className="sr-only">Actions</span></th></tr>
                </thead>
                <tbody>
                  {keys.map((k) => (
                    <tr key={k.id} className="border-t border-zinc-200 dark:border-zinc-800">
                      <td className="py-2 pr-3 font-medium">{k.name}</td>
                      <td className="pr-3 font-mono text-xs">{k.prefix}…</td>
                      <td className="pr-3 whitespace-nowrap">{formatDate(k.created_at)}</td>
                      <td className="pr-3 whitespace-nowrap">{formatDate(k.last_used_at)}</td>
                      <td className="text-right">
                        {k.revoked_at ? (
                          <span className="text-xs text-zinc-500">revoked {formatDate(k.revoked_at)}</span>
                        ) : (
                          <button type="button" onClick={() => setRevoking(k)} aria-label={`Revoke ${k.name}`} className="rounded px-2 py-1 text-red-700 hover:bg-red-50 dark:text-red-400 dark:hover:bg-red-950">
                            Revoke
                          </button>
                        )}
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
        </section>
      </div>
      <Dialog open={revoking !== null} onClose={() => setRevoking(null)} className="relative z-50">
        <div className="fixed inset-0 bg-black/40" aria-hidden="true" />
        <div className="fixed inset-0 flex items-center justify-center p-4">
          <DialogPanel className="w-full max-w-sm rounded-xl bg-white p-5 shadow-xl dark:bg-zinc-900">
            <DialogTitle className="text-lg font-semibold">Revoke “{revoking?.name}”?</DialogTitle>
            <p className="mt-2 text-sm text-zinc-600 dark:text-zinc-400">Programs using this key stop working at once.</p>
            <div className="mt-4 flex justify-end gap-2">
              <button type="button" onClick={() => setRevoking(null)} className="rounded-lg px-3 py-2 text-sm hover:bg-zinc-100 dark:hover:bg-zinc-800">Cancel</button>
              <button type="button" onClick={() => revoking && void revoke(revoking)} className="rounded-lg bg-red-600 px-3 py-2 text-sm font-medium text-white hover:bg-red-700">Revoke key</button>
            </div>
          </DialogPanel>
        </div>
      </Dialog>
    </div>
  );
}
