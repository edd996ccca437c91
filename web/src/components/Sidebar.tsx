import { Dialog, DialogPanel, DialogTitle, Field, Label, Menu, MenuButton, MenuItem, MenuItems, Switch } from "@headlessui/react";
import { useEffect, useRef, useState } from "react";
import { Link, NavLink, useMatch, useNavigate } from "react-router";
import { api, type Conversation } from "../api/client";
import { asApiError } from "../api/errors";
import { chats, forget, setTitle } from "../state/chat";
import { list, loadMore, refreshList, removeFromList, resetList, upsert } from "../state/conversations";
import { setTheme, theme } from "../state/prefs";
import { end, session } from "../state/session";
import { useStore } from "../state/store";
import { isLive } from "../state/turn";
import { ChartIcon, DotsIcon, KeyIcon, MoonIcon, PlusIcon, SunIcon } from "./icons";
import { ErrorNotice } from "./Notice";

const button =
  "rounded-lg px-3 py-2 text-sm font-medium hover:bg-zinc-200 focus-visible:outline-2 focus-visible:outline-teal-600 dark:hover:bg-zinc-800";

export function Sidebar({ onNavigate }: { onNavigate?: () => void }) {
  const navigate = useNavigate();
  const s = useStore(session);
  const current = useStore(theme);
  return (
    <div className="flex h-full flex-col gap-2 bg-zinc-50 p-3 dark:bg-zinc-950">
      <div className="flex items-center justify-between px-1">
        <Link to="/" onClick={onNavigate} className="text-lg font-semibold tracking-tight">
          chatplane
        </Link>
      </div>
      <button
        type="button"
        onClick={() => {
          navigate("/");
          onNavigate?.();
        }}
        className="flex items-center gap-2 rounded-lg border border-zinc-300 bg-white px-3 py-2 text-sm font-medium shadow-sm hover:bg-zinc-100 dark:border-zinc-700 dark:bg-zinc-900 dark:hover:bg-zinc-800"
      >
        <PlusIcon /> New chat
      </button>
      <ConversationList onNavigate={onNavigate} />
      <nav aria-label="Account" className="flex flex-col border-t border-zinc-200 pt-2 dark:border-zinc-800">
        <NavLink to="/keys" onClick={onNavigate} className={({ isActive }) => `${button} flex items-center gap-2 ${isActive ? "bg-zinc-200 dark:bg-zinc-800" : ""}`}>
          <KeyIcon /> API keys
        </NavLink>
        <NavLink to="/usage" onClick={onNavigate} className={({ isActive }) => `${button} flex items-center gap-2 ${isActive ? "bg-zinc-200 dark:bg-zinc-800" : ""}`}>
          <ChartIcon /> Usage
        </NavLink>
        <button
          type="button"
          onClick={() => setTheme(current === "dark" ? "light" : "dark")}
          className={`${button} flex items-center gap-2 text-left`}
        >
          {current === "dark" ? <SunIcon /> : <MoonIcon />}
          {current === "dark" ? "Light theme" : "Dark theme"}
        </button>
      </nav>
      <div className="flex items-center justify-between gap-2 border-t border-zinc-200 px-1 pt-2 text-sm dark:border-zinc-800">
        <span className="truncate text-zinc-600 dark:text-zinc-400" title={s?.email}>{s?.email}</span>
        <button type="button" onClick={() => end("logout")} className={`${button} shrink-0 whitespace-nowrap`}>
          Log out
        </button>
      </div>
    </div>
  );
}

function ConversationList({ onNavigate }: { onNavigate?: () => void }) {
  const state = useStore(list);
  const sentinel = useRef<HTMLLIElement>(null);
  useEffect(() => {
    if (!state.loaded && !state.loading) void refreshList();
  }, [state.loaded, state.loading]);
  useEffect(() => {
    // Paging: the next page loads when the end of the list scrolls into view (and with the button below).
    const el = sentinel.current;
    if (!el || !state.hasMore) return;
    const observer = new IntersectionObserver((entries) => entries.some((e) => e.isIntersecting) && void loadMore());
    observer.observe(el);
    return () => observer.disconnect();
  }, [state.hasMore, state.items.length]);
  return (
    <nav aria-label="Conversations" className="-mx-1 flex min-h-0 flex-1 flex-col overflow-y-auto px-1">
      <h2 className="px-2 pb-1 pt-2 text-xs font-semibold uppercase tracking-wide text-zinc-500">Conversations</h2>
      {state.error && <ErrorNotice onRetry={() => void refreshList()}>{state.error.message}</ErrorNotice>}
      {state.loaded && state.items.length === 0 && !state.error && (
        <p className="px-2 py-1 text-sm text-zinc-500">No conversations yet.</p>
      )}
      <ul className="flex flex-col gap-0.5">
        {state.items.map((c) => (
          <ConversationItem key={c.id} conversation={c} onNavigate={onNavigate} />
        ))}
        {state.hasMore && <li ref={sentinel} aria-hidden="true" className="h-1" />}
      </ul>
      {state.hasMore && (
        <button type="button" onClick={() => void loadMore()} disabled={state.loading} className={`${button} mt-1 text-zinc-600 dark:text-zinc-400`}>
          {state.loading ? "Loading…" : "Show more"}
        </button>
      )}
      <Field className="mt-2 flex items-center gap-2 px-2 text-sm text-zinc-600 dark:text-zinc-400">
        <Switch
          checked={state.includeArchived}
          onChange={(on: boolean) => {
            resetList(on);
            void refreshList();
          }}
          className="group relative inline-flex h-5 w-9 items-center rounded-full bg-zinc-300 transition data-checked:bg-teal-600 dark:bg-zinc-700"
        >
          <span className="inline-block h-4 w-4 translate-x-0.5 rounded-full bg-white transition group-data-checked:translate-x-4" />
        </Switch>
        <Label>Show archived</Label>
      </Field>
    </nav>
  );
}

function ConversationItem({ conversation: c, onNavigate }: { conversation: Conversation; onNavigate?: () => void }) {
  const navigate = useNavigate();
  const open = useMatch("/c/:id")?.params.id === c.id;
  const streaming = useStore(chats)[c.id]?.turns.some(isLive) ?? false;
  const [renaming, setRenaming] = useState(false);
  const [confirmDelete, setConfirmDelete] = useState(false);
  const [error, setError] = useState<string | null>(null);

  async function change(update: { title?: string; archived?: boolean }) {
    setError(null);
    try {
      const updated = await api.updateConversation(c.id, update);
      if (update.archived && !list.get().includeArchived) removeFromList(c.id);
      else upsert(updated);
      setTitle(c.id, updated.title);
    } catch (err) {
      setError(asApiError(err).message);
    }
  }

  async function remove() {
    setError(null);
    try {
      await api.deleteConversation(c.id);
      removeFromList(c.id);
      forget(c.id);
      setConfirmDelete(false);
      if (open) navigate("/");
    } catch (err) {
      setError(asApiError(err).message);
      setConfirmDelete(false);
    }
  }

  return (
    <li className="group relative">
      {renaming ? (
        <form
          onSubmit={(e) => {
            e.preventDefault();
            const title = new FormData(e.currentTarget).get("title")?.toString().trim() ?? "";
            setRenaming(false);
            if (title && title !== c.title) void change({ title });
          }}
        >
          <input
            name="title"
            aria-label="Title"
            defaultValue={c.title}
            maxLength={200}
            autoFocus
            onBlur={(e) => e.currentTarget.form?.requestSubmit()}
            onKeyDown={(e) => e.key === "Escape" && setRenaming(false)}
            className="w-full rounded-lg border border-teal-600 bg-white px-2 py-1.5 text-sm dark:bg-zinc-900"
          />
        </form>
      ) : (
        <Link
          to={`/c/${c.id}`}
          onClick={onNavigate}
          aria-current={open ? "page" : undefined}
          className={`flex items-center gap-2 rounded-lg py-2 pl-2 pr-9 text-sm hover:bg-zinc-200 dark:hover:bg-zinc-800 ${open ? "bg-zinc-200 font-medium dark:bg-zinc-800" : ""}`}
        >
          <span className="truncate">{c.title}</span>
          {c.archived && <span className="rounded bg-zinc-300 px-1 text-xs dark:bg-zinc-700">archived</span>}
          {streaming && (
            <span className="ml-auto h-2 w-2 shrink-0 animate-pulse rounded-full bg-teal-500">
              <span className="sr-only">Replying</span>
            </span>
          )}
        </Link>
      )}
      {!renaming && (
        <Menu>
          <MenuButton
            aria-label={`Options for ${c.title}`}
            className="absolute right-1 top-1.5 rounded p-1 text-zinc-500 opacity-100 hover:bg-zinc-300 md:opacity-0 md:group-hover:opacity-100 md:focus:opacity-100 md:data-open:opacity-100 dark:hover:bg-zinc-700"
          >
            <DotsIcon />
          </MenuButton>
          <MenuItems anchor="bottom end" className="z-50 w-40 rounded-lg border border-zinc-200 bg-white p-1 text-sm shadow-lg focus:outline-none dark:border-zinc-700 dark:bg-zinc-900">
            <MenuItem>
              <button type="button" onClick={() => setRenaming(true)} className="block w-full rounded px-3 py-1.5 text-left data-focus:bg-zinc-100 dark:data-focus:bg-zinc-800">
                Rename
              </button>
            </MenuItem>
            <MenuItem>
              <button type="button" onClick={() => void change({ archived: !c.archived })} className="block w-full rounded px-3 py-1.5 text-left data-focus:bg-zinc-100 dark:data-focus:bg-zinc-800">
                {c.archived ? "Unarchive" : "Archive"}
              </button>
            </MenuItem>
            <MenuItem>
              <button type="button" onClick={() => setConfirmDelete(true)} className="block w-full rounded px-3 py-1.5 text-left text-red-700 data-focus:bg-red-50 dark:text-red-400 dark:data-focus:bg-red-950">
                Delete
              </button>
            </MenuItem>
          </MenuItems>
        </Menu>
      )}
      {error && <p role="alert" className="px-2 text-xs text-red-700 dark:text-red-400">{error}</p>}
      <Dialog open={confirmDelete} onClose={() => setConfirmDelete(false)} className="relative z-50">
        <div className="fixed inset-0 bg-black/40" aria-hidden="true" />
        <div className="fixed inset-0 flex items-center justify-center p-4">
          <DialogPanel className="w-full max-w-sm rounded-xl bg-white p-5 shadow-xl dark:bg-zinc-900">
            <DialogTitle className="text-lg font-semibold">Delete conversation?</DialogTitle>
            <p className="mt-2 text-sm text-zinc-600 dark:text-zinc-400">
              “{c.title}” and all its messages will be deleted for good.
            </p>
            <div className="mt-4 flex justify-end gap-2">
              <button type="button" onClick={() => setConfirmDelete(false)} className={button}>Cancel</button>
              <button type="button" onClick={() => void remove()} className="rounded-lg bg-red-600 px-3 py-2 text-sm font-medium text-white hover:bg-red-700">
                Delete
              </button>
            </div>
          </DialogPanel>
        </div>
      </Dialog>
    </li>
  );
}
