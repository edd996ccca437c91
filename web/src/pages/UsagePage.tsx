import { useEffect, useState } from "react";
import { api, type ApiKey, type Quota, type UsageReport } from "../api/client";
import { asApiError } from "../api/errors";
import { compact, formatNumber } from "../components/format";
import { ErrorNotice } from "../components/Notice";
import { lastDays, perDay, totalsBy, type DayTotal } from "../state/usage";

const DAYS = 30;

export default function UsagePage() {
  const [usage, setUsage] = useState<UsageReport | null>(null);
  const [quotas, setQuotas] = useState<Quota[] | null>(null);
  const [keys, setKeys] = useState<ApiKey[]>([]);
  const [error, setError] = useState<string | null>(null);

  async function load() {
    const { start, end } = lastDays(DAYS);
    try {
      const [u, q, k] = await Promise.all([api.usage(start, end), api.quotas(), api.apiKeys()]);
      setUsage(u);
      setQuotas(q.data);
      setKeys(k.data);
      setError(null);
    } catch (err) {
      setError(asApiError(err).message);
    }
  }
  useEffect(() => {
    void load();
  }, []);

  const keyName = (id: string) => (id ? keys.find((k) => k.id === id)?.name ?? `key ${id.slice(0, 8)}` : "Web app (signed in)");
  const days = usage ? perDay(usage.data, usage.start_date, usage.end_date) : [];

  return (
    <div className="min-h-0 flex-1 overflow-y-auto">
      <div className="mx-auto flex max-w-3xl flex-col gap-6 px-4 py-6">
        <div>
          <h1 className="text-xl font-semibold">Usage</h1>
          <p className="mt-1 text-sm text-zinc-500">Tokens of the last {DAYS} days (UTC), prompt and reply. New use shows up within seconds.</p>
        </div>
        {error && <ErrorNotice onRetry={() => void load()}>{error}</ErrorNotice>}
        {usage === null && !error && <p role="status" className="text-sm text-zinc-500">Loading…</p>}
        {usage && (
          <>
            <dl className="grid grid-cols-2 gap-3 sm:grid-cols-4">
              <Stat label="Requests" value={usage.totals.requests} />
              <Stat label="Prompt tokens" value={usage.totals.prompt_tokens} />
              <Stat label="Reply tokens" value={usage.totals.completion_tokens} />
              <Stat label="Total tokens" value={usage.totals.total_tokens} />
            </dl>
            <DayChart days={days} />
            <div className="grid gap-6 sm:grid-cols-2">
              <Breakdown title="Per model" rows={totalsBy(usage.data, "model").map((t) => ({ ...t, name: t.key }))} />
              <Breakdown title="Per API key" rows={totalsBy(usage.data, "api_key_id").map((t) => ({ ...t, name: keyName(t.key) }))} />
            </div>
          </>
        )}
        {quotas && <Quotas quotas={quotas} keyName={keyName} />}
      </div>
    </div>
  );
}

function Stat({ label, value }: { label: string; value: number }) {
  return (
    <div className="rounded-xl border border-zinc-200 p-3 dark:border-zinc-800">
      <dt className="text-xs text-zinc-500">{label}</dt>
      <dd className="text-lg font-semibold">{formatNumber(value)}</dd>
    </div>
  );
}

function DayChart({ days }: { days: DayTotal[] }) {
  const max = Math.max(1, ...days.map((d) => d.prompt + d.completion));
  const W = 600;
  const H = 160;
  const bar = W / Math.max(1, days.length);
  const y = (v: number) => (v / max) * (H - 16);
  return (
    <figure className="rounded-xl border border-zinc-200 p-3 dark:border-zinc-800">
      <figcaption className="mb-2 flex flex-wrap items-center gap-4 text-sm font-medium">
        Tokens per day
        <span className="flex items-center gap-1 text-xs font-normal text-zinc-500"><span className="inline-block h-2.5 w-2.5 rounded-sm bg-teal-600" /> reply</span>
        <span className="flex items-center gap-1 text-xs font-normal text-zinc-500"><span className="inline-block h-2.5 w-2.5 rounded-sm bg-teal-300 dark:bg-teal-800" /> prompt</span>
      </figcaption>
      <svg viewBox={`0 0 ${W} ${H + 18}`} className="h-auto w-full" role="img"
           aria-label={`Tokens per day, ${days[0]?.date ?? ""} to ${days[days.length - 1]?.date ?? ""}; most in one day: ${formatNumber(max)}`}>
        <text x={0} y={10} className="fill-zinc-500 text-[10px]">{compact(max)}</text>
        <line x1={0} x2={W} y1={H} y2={H} className="stroke-zinc-300 dark:stroke-zinc-700" />
        {days.map((d, i) => {
          const p = y(d.prompt);
          const c = y(d.completion);
          return (
            <g key={d.date}>
              <title>{`${d.date}: ${formatNumber(d.prompt)} prompt + ${formatNumber(d.completion)} reply tokens`}</title>
              <rect x={i * bar + 1} width={Math.max(1, bar - 2)} y={H - p} height={p} className="fill-teal-300 dark:fill-teal-800" />
              <rect x={i * bar + 1} width={Math.max(1, bar - 2)} y={H - p - c} height={c} className="fill-teal-600" />
            </g>
          );
        })}
        <text x={0} y={H + 14} className="fill-zinc-500 text-[10px]">{days[0]?.date.slice(5)}</text>
        <text x={W} y={H + 14} textAnchor="end" className="fill-zinc-500 text-[10px]">{days[days.length - 1]?.date.slice(5)}</text>
      </svg>
    </figure>
  );
}

function Breakdown({ title, rows }: { title: string; rows: { name: string; requests: number; tokens: number }[] }) {
  return (
    <section>
      <h2 className="mb-2 font-semibold">{title}</h2>
      {rows.length === 0 ? (
        <p className="text-sm text-zinc-500">No use in this period.</p>
      ) : (
        <table className="w-full table-fixed text-left text-sm">
          <thead className="text-xs uppercase text-zinc-500">
            <tr><th className="w-1/2 py-1 pr-2">Name</th><th className="pr-2 text-right">Requests</th><th className="text-right">Tokens</th></tr>
          </thead>
          <tbody>
            {rows.map((r) => (
              <tr key={r.name} className="border-t border-zinc-200 dark:border-zinc-800">
                <td className="truncate py-1.5 pr-2" title={r.name}>{r.name}</td>
                <td className="pr-2 text-right">{formatNumber(r.requests)}</td>
                <td className="text-right">{formatNumber(r.tokens)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function Quotas({ quotas, keyName }: { quotas: Quota[]; keyName: (id: string) => string }) {
  return (
    <section>
      <h2 className="mb-2 font-semibold">Quotas</h2>
      {quotas.length === 0 ? (
        <p className="text-sm text-zinc-500">No quota applies to you: your use is limited only by the rate limits.</p>
      ) : (
        <ul className="flex flex-col gap-3">
          {quotas.map((q) => {
            const left = Math.max(0, q.token_limit - q.used_tokens);
            const share = q.token_limit ? Math.min(1, q.used_tokens / q.token_limit) : 1;
            return (
              <li key={`${q.api_key_id ?? "account"}-${q.period}`} className="rounded-xl border border-zinc-200 p-3 dark:border-zinc-800">
                <div className="flex flex-wrap justify-between gap-2 text-sm">
                  <span className="font-medium">
                    {q.api_key_id ? keyName(q.api_key_id) : "Your account"}: {formatNumber(q.token_limit)} tokens a {q.period}
                  </span>
                  <span>{formatNumber(left)} left</span>
                </div>
                <progress max={1} value={share} aria-label={`Used ${formatNumber(q.used_tokens)} of ${formatNumber(q.token_limit)} tokens`}
                          className="quota mt-2 h-2 w-full" />
                <p className="mt-1 text-xs text-zinc-500">
                  Used {formatNumber(q.used_tokens)}; renews {new Date(q.period_end).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" })}
                </p>
              </li>
            );
          })}
        </ul>
      )}
    </section>
  );
}
