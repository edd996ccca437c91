import type { ReactNode } from "react";

export function ErrorNotice({ children, onRetry }: { children: ReactNode; onRetry?: () => void }) {
  return (
    <div role="alert" className="flex items-start gap-3 rounded-lg border border-red-300 bg-red-50 px-3 py-2 text-sm text-red-800 dark:border-red-800 dark:bg-red-950/60 dark:text-red-200">
      <span className="flex-1">{children}</span>
      {onRetry && (
        <button type="button" onClick={onRetry} className="font-medium underline">
          Try again
        </button>
      )}
    </div>
  );
}

export function InfoNotice({ children }: { children: ReactNode }) {
  return (
    <div role="status" className="rounded-lg border border-amber-300 bg-amber-50 px-3 py-2 text-sm text-amber-900 dark:border-amber-700 dark:bg-amber-950/60 dark:text-amber-100">
      {children}
    </div>
  );
}

/** A small note under a reply, e.g. that it did not end normally; `action` is a control that fits it. */
export function ReplyNote({ children, action }: { children: ReactNode; action?: ReactNode }) {
  return (
    <div role="note" className="flex flex-wrap items-center gap-x-3 gap-y-1 self-start rounded-lg border border-zinc-200 bg-zinc-50 px-3 py-1.5 text-xs text-zinc-600 dark:border-zinc-700 dark:bg-zinc-900 dark:text-zinc-400">
      <span>{children}</span>
      {action}
    </div>
  );
}
