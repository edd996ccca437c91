import { Field, Input, Label, Popover, PopoverButton, PopoverPanel, Select } from "@headlessui/react";
import { lazy, Suspense, useEffect, useLayoutEffect, useRef, useState, type FormEvent, type KeyboardEvent } from "react";
import { useNavigate, useParams } from "react-router";
import type { Message } from "../api/client";
import { asApiError } from "../api/errors";
import { CopyButton } from "../components/CopyButton";
import { SendIcon, SlidersIcon, StopIcon } from "../components/icons";
import { ErrorNotice, ReplyNote } from "../components/Notice";
import { ENDING_TEXT, messageEnding, turnEnding, type Ending } from "../state/ending";
import { chats, dismissFailed, loadConversation, regenerate, send, stopReply } from "../state/chat";
import { list } from "../state/conversations";
import { generation, loadModels, models, selectModel, setGeneration } from "../state/prefs";
import { useStore } from "../state/store";
import { isLive, shownMessages, type Turn } from "../state/turn";

const EMPTY: never[] = [];
// Markdown (marked) is its own chunk, asked for as soon as this page loads: the login page does without it, and a
// reply shows as plain text for the moment it takes to arrive.
const loadMarkdown = () => import("../markdown/Markdown");
const LazyMarkdown = lazy(loadMarkdown);

function Markdown({ text }: { text: string }) {
  return (
    <Suspense fallback={<div className="whitespace-pre-wrap break-words leading-relaxed">{text}</div>}>
      <LazyMarkdown text={text} />
    </Suspense>
  );
}

export function ChatPage() {
  const { id } = useParams();
  const all = useStore(chats);
  const chat = id ? all[id] : undefined;
  const listTitle = useStore(list).items.find((c) => c.id === id)?.title;
  const [sendError, setSendError] = useState<string | null>(null);
  const navigate = useNavigate();
  const scroller = useRef<HTMLDivElement>(null);
  const stickToBottom = useRef(true);

  useEffect(() => {
    void loadMarkdown();
  }, []);

  useEffect(() => {
    setSendError(null);
    stickToBottom.current = true;
    if (id && !chats.get()[id]?.loaded) void loadConversation(id);
  }, [id]);

  const shown = shownMessages(chat?.stored ?? EMPTY, chat?.turns ?? EMPTY);
  const live = chat?.turns.find(isLive);
  const lastText = shown.length ? JSON.stringify(shown[shown.length - 1]).length : 0;

  useLayoutEffect(() => {
    // Follow the reply as it grows, unless the reader scrolled up.
    const el = scroller.current;
    if (el && stickToBottom.current) el.scrollTop = el.scrollHeight;
  }, [shown.length, lastText, id]);

  async function submit(content: string): Promise<boolean> {
    setSendError(null);
    const { selected } = models.get();
    const { temperature, maxTokens } = generation.get();
    try {
      const convId = await send(id ?? null, { content, model: selected || undefined, temperature, maxTokens });
      stickToBottom.current = true;
      if (convId !== id) navigate(`/c/${convId}`);
      return true;
    } catch (err) {
      setSendError(asApiError(err).message);
      return false;
    }
  }

  function again(question: Message, reply: Message): void {
    if (!id) return;
    setSendError(null);
    const { selected } = models.get();
    const { temperature, maxTokens } = generation.get();
    stickToBottom.current = true;
    regenerate(id, question, reply, { model: selected || undefined, temperature, maxTokens });
  }

  const title = listTitle || chat?.title || (id ? "" : "New chat"); // the list learns the title job's title
  const notFound = chat?.error?.kind === "not_found";
  // The last reply can be generated again: a new answer to its question replaces it.
  const lastUser = [...shown].reverse().find((m) => m.kind === "stored" && m.message.role === "user");
  const lastShown = shown[shown.length - 1];
  const canRegenerate = !live && lastShown?.kind === "stored" && lastShown.message.role === "assistant" && lastUser?.kind === "stored";

  return (
    <div className="flex min-h-0 flex-1 flex-col">
      <div className="flex items-center gap-3 border-b border-zinc-200 px-4 py-2 dark:border-zinc-800">
        <h1 className="min-w-0 flex-1 truncate text-base font-semibold">{notFound ? "Conversation not found" : title}</h1>
        <ModelPicker />
      </div>
      <div
        ref={scroller}
        onScroll={(e) => {
          const el = e.currentTarget;
          stickToBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < 80;
        }}
        className="min-h-0 flex-1 overflow-y-auto"
      >
        <div className="mx-auto flex max-w-3xl flex-col gap-5 px-4 py-6">
          {!id && shown.length === 0 && (
            <div className="mt-[12vh] text-center">
              <p className="text-2xl font-semibold">How can I help?</p>
              <p className="mt-2 text-sm text-zinc-500">Your conversations are kept; find them in the list on the left.</p>
            </div>
          )}
          {chat?.error && !notFound && (
            <ErrorNotice onRetry={() => id && void loadConversation(id)}>{chat.error.message}</ErrorNotice>
          )}
          {notFound && (
            <ErrorNotice>This conversation does not exist, or it is not yours. Start a new chat instead.</ErrorNotice>
          )}
          {id && chat?.loading && !chat.loaded && <p role="status" className="text-sm text-zinc-500">Loading…</p>}
          {shown.map((m) =>
            m.kind === "stored" ? (
              m.message.role === "user" ? (
                <UserMessage key={m.message.id} text={m.message.content} />
              ) : m.message.role === "assistant" ? (
                <Reply
                  key={m.message.id}
                  text={m.message.content}
                  status="done"
                  ending={messageEnding(m.message)}
                  onRegenerate={
                    canRegenerate && m === lastShown && lastUser?.kind === "stored"
                      ? () => again(lastUser.message, m.message)
                      : undefined
                  }
                />
              ) : null
            ) : m.kind === "turn-user" ? (
              <UserMessage key={`${m.turn.localId}-u`} text={m.turn.userText} />
            ) : (
              <TurnReply key={`${m.turn.localId}-r`} turn={m.turn} conversationId={id!} />
            ),
          )}
        </div>
      </div>
      <div className="mx-auto w-full max-w-3xl px-3 pb-3 pt-1">
        {sendError && <div className="mb-2"><ErrorNotice>{sendError}</ErrorNotice></div>}
        <Composer
          key={id ?? "new"}
          streaming={!!live}
          onSend={submit}
          onStop={() => id && stopReply(id)}
          disabled={notFound}
        />
        <p className="mt-1.5 text-center text-xs text-zinc-500">Replies come from a small model and can be wrong.</p>
      </div>
    </div>
  );
}

function UserMessage({ text }: { text: string }) {
  return (
    <div className="flex justify-end">
      <div className="max-w-[85%] whitespace-pre-wrap break-words rounded-2xl bg-zinc-100 px-4 py-2.5 dark:bg-zinc-800">
        {text}
      </div>
    </div>
  );
}

function Reply({
  text,
  status,
  ending = null,
  error,
  onRegenerate,
}: {
  text: string;
  status: "waiting" | "streaming" | "done" | "stopped" | "failed";
  ending?: Ending;
  error?: string | null;
  onRegenerate?: () => void;
}) {
  const busy = status === "waiting" || status === "streaming";
  // A reply cut off at the length limit offers Regenerate in its note (the API has no way to continue a reply).
  const regenerateInNote = ending === "length" && !!onRegenerate;
  const regenerateButton = onRegenerate && (
    <button type="button" onClick={onRegenerate} className="rounded px-2 py-0.5 text-xs hover:bg-zinc-200 dark:hover:bg-zinc-700">
      Regenerate
    </button>
  );
  return (
    <article aria-label="Assistant reply" aria-busy={busy} className="group flex flex-col gap-2">
      <div className="reply-body">{text ? <Markdown text={text} /> : status === "waiting" ? <TypingDots /> : null}</div>
      {status === "streaming" && text && <span className="sr-only">Replying…</span>}
      {ending && <ReplyNote action={regenerateInNote && regenerateButton}>{ENDING_TEXT[ending]}</ReplyNote>}
      {error && <ErrorNotice>{error}</ErrorNotice>}
      {!busy && text && (
        <div className="flex gap-1 text-zinc-500">
          <CopyButton text={text} label="Copy reply" />
          {!regenerateInNote && regenerateButton}
        </div>
      )}
    </article>
  );
}

function TurnReply({ turn, conversationId }: { turn: Turn; conversationId: string }) {
  const status = turn.status === "sending" ? "waiting" : turn.status;
  return (
    <div>
      <Reply text={turn.reply} status={status} ending={turnEnding(turn)} error={turn.error} />
      {turn.status === "failed" && (
        <button type="button" onClick={() => dismissFailed(conversationId, turn.localId)} className="mt-1 text-xs text-zinc-500 underline">
          Dismiss
        </button>
      )}
    </div>
  );
}

function TypingDots() {
  return (
    <span className="flex h-6 items-center gap-1" role="status" aria-label="Waiting for the reply">
      {[0, 1, 2].map((i) => (
        <span key={i} className={`h-2 w-2 animate-bounce rounded-full bg-zinc-400 dot-${i}`} />
      ))}
    </span>
  );
}

function ModelPicker() {
  const state = useStore(models);
  useEffect(() => {
    if (!state.loaded) void loadModels();
  }, [state.loaded]);
  return (
    <Field className="flex items-center gap-2 text-sm">
      <Label className="sr-only text-zinc-500 sm:not-sr-only">Model</Label>
      <Select
        value={state.selected}
        onChange={(e) => selectModel(e.target.value)}
        disabled={state.ids.length === 0}
        className="max-w-[11rem] rounded-lg border border-zinc-300 bg-white px-2 py-1 text-sm sm:max-w-xs dark:border-zinc-700 dark:bg-zinc-900"
      >
        {state.ids.length === 0 && <option value="">{state.error ? "unavailable" : "loading…"}</option>}
        {state.ids.map((m) => (
          <option key={m} value={m}>{m}</option>
        ))}
      </Select>
    </Field>
  );
}

function Composer({
  streaming,
  onSend,
  onStop,
  disabled,
}: {
  streaming: boolean;
  onSend: (content: string) => Promise<boolean>;
  onStop: () => void;
  disabled: boolean;
}) {
  const [text, setText] = useState("");
  const [sending, setSending] = useState(false);
  const area = useRef<HTMLTextAreaElement>(null);

  useLayoutEffect(() => {
    const el = area.current;
    if (!el) return;
    el.style.height = "auto"; // CSSOM, which the CSP allows (no style attribute in the markup)
    el.style.height = `${Math.min(el.scrollHeight, 240)}px`;
  }, [text]);

  async function submit(e?: FormEvent) {
    e?.preventDefault();
    const content = text.trim();
    if (!content || streaming || sending || disabled) return;
    setSending(true);
    setText("");
    const ok = await onSend(content);
    if (!ok) setText(content); // keep what was typed when it could not be sent
    setSending(false);
    area.current?.focus();
  }

  function onKeyDown(e: KeyboardEvent<HTMLTextAreaElement>) {
    if (e.key === "Enter" && !e.shiftKey && !e.nativeEvent.isComposing) {
      e.preventDefault();
      void submit();
    }
  }

  return (
    <form onSubmit={submit} className="flex items-end gap-2 rounded-2xl border border-zinc-300 bg-white p-2 shadow-sm focus-within:border-teal-600 dark:border-zinc-700 dark:bg-zinc-900">
      <SettingsPopover />
      <textarea
        ref={area}
        aria-label="Message"
        placeholder="Message chatplane"
        rows={1}
        value={text}
        onChange={(e) => setText(e.target.value)}
        onKeyDown={onKeyDown}
        maxLength={64000}
        autoFocus
        className="max-h-60 min-h-10 flex-1 resize-none bg-transparent px-2 py-2 outline-none placeholder:text-zinc-400"
      />
      {streaming ? (
        <button type="button" onClick={onStop} className="flex h-10 items-center gap-1 rounded-xl bg-zinc-900 px-3 text-sm font-medium text-white hover:bg-zinc-700 dark:bg-zinc-100 dark:text-zinc-900">
          <StopIcon className="h-4 w-4" /> Stop
        </button>
      ) : (
        <button
          type="submit"
          disabled={!text.trim() || sending || disabled}
          className="flex h-10 items-center gap-1 rounded-xl bg-teal-600 px-3 text-sm font-medium text-white hover:bg-teal-700 disabled:opacity-40"
        >
          <SendIcon className="h-4 w-4" /> Send
        </button>
      )}
    </form>
  );
}

function SettingsPopover() {
  const settings = useStore(generation);
  const num = (v: string, min: number, max: number, int = false): number | undefined => {
    if (v.trim() === "") return undefined;
    const n = int ? Math.round(Number(v)) : Number(v);
    return Number.isFinite(n) ? Math.min(max, Math.max(min, n)) : undefined;
  };
  return (
    <Popover className="relative">
      <PopoverButton aria-label="Settings" className="flex h-10 w-10 items-center justify-center rounded-xl text-zinc-500 hover:bg-zinc-100 dark:hover:bg-zinc-800">
        <SlidersIcon />
      </PopoverButton>
      <PopoverPanel anchor="top start" className="z-50 w-64 rounded-xl border border-zinc-200 bg-white p-4 text-sm shadow-lg dark:border-zinc-700 dark:bg-zinc-900">
        <p className="mb-3 text-xs text-zinc-500">Empty: the model's defaults.</p>
        <Field className="mb-3 flex flex-col gap-1">
          <Label className="font-medium">Temperature</Label>
          <Input
            type="number" min={0} max={2} step={0.1} inputMode="decimal" placeholder="default"
            value={settings.temperature ?? ""}
            onChange={(e) => setGeneration({ ...settings, temperature: num(e.target.value, 0, 2) })}
            className="rounded-lg border border-zinc-300 bg-white px-2 py-1 dark:border-zinc-700 dark:bg-zinc-950"
          />
        </Field>
        <Field className="flex flex-col gap-1">
          <Label className="font-medium">Max tokens</Label>
          <Input
            type="number" min={1} max={100000} step={1} inputMode="numeric" placeholder="default"
            value={settings.maxTokens ?? ""}
            onChange={(e) => setGeneration({ ...settings, maxTokens: num(e.target.value, 1, 100000, true) })}
            className="rounded-lg border border-zinc-300 bg-white px-2 py-1 dark:border-zinc-700 dark:bg-zinc-950"
          />
        </Field>
      </PopoverPanel>
    </Popover>
  );
}

export type { Message };
