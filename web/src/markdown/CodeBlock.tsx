import { useEffect, useState } from "react";
import { CopyButton } from "../components/CopyButton";

type Highlighter = (code: string, lang: string) => string | null;
let loaded: Promise<Highlighter> | null = null;
function loadHighlighter(): Promise<Highlighter> {
  loaded ??= import("./highlight").then((m) => m.highlight);
  return loaded;
}

export function CodeBlock({ code, lang }: { code: string; lang: string }) {
  const [html, setHtml] = useState<string | null>(null);
  useEffect(() => {
    let current = true;
    // Highlight once the text has stopped changing for a moment (a block still streaming changes every token).
    const timer = setTimeout(() => {
      void loadHighlighter().then((h) => current && setHtml(h(code, lang)));
    }, 150);
    return () => {
      current = false;
      clearTimeout(timer);
    };
  }, [code, lang]);
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
