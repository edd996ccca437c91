import { useEffect, useMemo, useState } from "react";
import { CopyButton } from "../components/CopyButton";

type Highlighter = (code: string, lang: string) => string | null;
let highlighter: Highlighter | null = null;
let loading: Promise<Highlighter> | null = null;
function loadHighlighter(): Promise<Highlighter> {
  loading ??= import("./highlight").then((m) => (highlighter = m.highlight));
  return loading;
}

export function CodeBlock({ code, lang }: { code: string; lang: string }) {
  const [ready, setReady] = useState(highlighter !== null);
  useEffect(() => {
    if (!ready) void loadHighlighter().then(() => setReady(true));
  }, [ready]);
  // Once the highlighter's chunk is here, highlighting is synchronous (no flash of plain code on a re-render).
  const html = useMemo(() => (ready && highlighter ? highlighter(code, lang) : null), [ready, code, lang]);
  return (
    <div className="overflow-hidden rounded-lg border border-zinc-200 bg-zinc-50 text-sm dark:border-zinc-700 dark:bg-zinc-950">
      <div className="flex items-center justify-between border-b border-zinc-200 px-3 py-1 text-xs text-zinc-500 dark:border-zinc-700 dark:text-zinc-400">
        <span>{lang || "code"}</span>
        <CopyButton text={code} label="Copy code" />
      </div>
      <pre className="overflow-x-auto p-3">
        {html !== null ? (
          // highlight.js output: the code escaped, wrapped in its own <span class="hljs-..."> tags only.
          <code className="hljs" dangerouslySetInnerHTML={{ __html: html }} />
        ) : (
          <code>{code}</code>
        )}
      </pre>
    </div>
  );
}
