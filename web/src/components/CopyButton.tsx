import { useState } from "react";

export async function copyText(text: string): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    return false; // no clipboard permission (an insecure origin): the text stays selectable
  }
}

export function CopyButton({ text, label = "Copy", className = "" }: { text: string; label?: string; className?: string }) {
  const [state, setState] = useState<"idle" | "copied" | "failed">("idle");
  return (
    <button
      type="button"
      aria-label={label}
      onClick={async () => {
        setState((await copyText(text)) ? "copied" : "failed");
        setTimeout(() => setState("idle"), 1500);
      }}
      className={`rounded px-2 py-0.5 text-xs hover:bg-zinc-200 dark:hover:bg-zinc-700 ${className}`}
    >
      {state === "copied" ? "Copied" : state === "failed" ? "Copy failed: select it" : label}
    </button>
  );
}
