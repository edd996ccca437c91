// The conversation list (newest first, paged with the API's cursor) and the titles the title job writes later.

import { api, type Conversation } from "../api/client";
import { asApiError, type ApiError } from "../api/errors";
import { Store } from "./store";

export const DEFAULT_TITLE = "New conversation";
const PAGE = 20;

export interface ListState {
  items: Conversation[];
  nextCursor: string | null;
  hasMore: boolean;
  loading: boolean;
  loaded: boolean;
  includeArchived: boolean;
  error: ApiError | null;
}

const empty: ListState = {
  items: [],
  nextCursor: null,
  hasMore: false,
  loading: false,
  loaded: false,
  includeArchived: false,
  error: null,
};
export const list = new Store<ListState>(empty);
let generation = 0; // a reset (log out, filter change) makes answers to older requests irrelevant

export function resetList(includeArchived = false): void {
  generation++;
  list.set({ ...empty, includeArchived });
}

/** Merge a page into the list: updated items replace their old copy; order stays newest first. */
export function mergePage(items: Conversation[], page: Conversation[], replaceHead: boolean): Conversation[] {
  const byId = new Map(page.map((c) => [c.id, c]));
  if (replaceHead) {
    const rest = items.filter((c) => !byId.has(c.id));
    return sortNewest([...page, ...rest]);
  }
  const seen = new Set(items.map((c) => c.id));
  return [...items.map((c) => byId.get(c.id) ?? c), ...page.filter((c) => !seen.has(c.id))];
}

function sortNewest(items: Conversation[]): Conversation[] {
  return [...items].sort((a, b) => (b.updated_at ?? 0) - (a.updated_at ?? 0));
}

/** The first page again (after a send, while waiting for a title); keeps the pages loaded beyond it. */
export async function refreshList(): Promise<void> {
  const gen = generation;
  const { includeArchived, loaded } = list.get();
  list.set((s) => ({ ...s, loading: true }));
  try {
    const page = await api.conversations(null, PAGE, includeArchived);
    if (gen !== generation) return;
    list.set((s) => ({
      ...s,
      items: loaded ? mergePage(s.items, page.data, true) : page.data,
      nextCursor: loaded ? s.nextCursor : page.next_cursor,
      hasMore: loaded ? s.hasMore : page.has_more,
      loading: false,
      loaded: true,
      error: null,
    }));
  } catch (err) {
    if (gen === generation) list.set((s) => ({ ...s, loading: false, error: asApiError(err) }));
  }
}

export async function loadMore(): Promise<void> {
  const gen = generation;
  const s0 = list.get();
  if (s0.loading || !s0.hasMore || !s0.nextCursor) return;
  list.set((s) => ({ ...s, loading: true }));
  try {
    const page = await api.conversations(s0.nextCursor, PAGE, s0.includeArchived);
    if (gen !== generation) return;
    list.set((s) => ({
      ...s,
      items: mergePage(s.items, page.data, false),
      nextCursor: page.next_cursor,
      hasMore: page.has_more,
      loading: false,
      error: null,
    }));
  } catch (err) {
    if (gen === generation) list.set((s) => ({ ...s, loading: false, error: asApiError(err) }));
  }
}

export function upsert(conversation: Conversation): void {
  list.set((s) => ({ ...s, items: mergePage(s.items, [conversation], true) }));
}

export function removeFromList(id: string): void {
  list.set((s) => ({ ...s, items: s.items.filter((c) => c.id !== id) }));
}

export function titleOf(id: string): string | undefined {
  return list.get().items.find((c) => c.id === id)?.title;
}

/** After a first exchange the title job names the conversation within seconds: look again until it has. */
export function watchForTitle(id: string, { every = 1500, forMs = 60_000 } = {}): void {
  const gen = generation;
  const until = Date.now() + forMs;
  const tick = async () => {
    if (gen !== generation || Date.now() > until) return;
    await refreshList();
    const title = titleOf(id);
    if (title !== undefined && title !== DEFAULT_TITLE) return;
    setTimeout(tick, every);
  };
  setTimeout(tick, every);
}
