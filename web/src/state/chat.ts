// Each conversation's messages and the replies being received. Streams live here, outside the pages, so a reply
// keeps streaming while the person reads or writes in another conversation.

import { api, streamMessage, type Message, type SendOptions } from "../api/client";
import { asApiError, type ApiError } from "../api/errors";
import { DEFAULT_TITLE, refreshList, titleOf, upsert, watchForTitle } from "./conversations";
import { Store } from "./store";
import { applyEvent, fail, isLive, newTurn, settledMessages, stop, type Turn } from "./turn";

export interface ChatState {
  stored: Message[];
  title: string;
  loaded: boolean;
  loading: boolean;
  error: ApiError | null;
  turns: Turn[];
}

const blank: ChatState = { stored: [], title: "", loaded: false, loading: false, error: null, turns: [] };
export const chats = new Store<Record<string, ChatState>>({});
const controllers = new Map<string, AbortController>(); // by turn localId
let counter = 0;

function update(id: string, change: (c: ChatState) => ChatState): void {
  chats.set((all) => ({ ...all, [id]: change(all[id] ?? blank) }));
}

function updateTurn(id: string, localId: string, change: (t: Turn) => Turn): void {
  update(id, (c) => ({ ...c, turns: c.turns.map((t) => (t.localId === localId ? change(t) : t)) }));
}

export function chatOf(id: string | undefined): ChatState {
  return (id && chats.get()[id]) || blank;
}

export function liveTurn(id: string | undefined): Turn | undefined {
  return chatOf(id).turns.find(isLive);
}

export async function loadConversation(id: string): Promise<void> {
  update(id, (c) => ({ ...c, loading: true }));
  try {
    const conv = await api.conversation(id);
    update(id, (c) => ({
      ...c,
      stored: conv.messages,
      title: conv.title,
      loaded: true,
      loading: false,
      error: null,
      // Finished turns are in the stored list now; only live ones stay on top of it.
      turns: c.turns.filter((t) => isLive(t) || (t.status === "failed" && !t.userMessageId)),
    }));
  } catch (err) {
    update(id, (c) => ({ ...c, loading: false, error: asApiError(err) }));
  }
}

/** A finished turn becomes stored messages (as the server stored them), so the view needs no new fetch. */
function settle(id: string, turn: Turn): void {
  update(id, (c) => {
    if (turn.status === "failed") return c;
    const { user, reply } = settledMessages(turn, Math.floor(Date.now() / 1000));
    const turns = c.turns.filter((t) => t.localId !== turn.localId);
    if (turn.replaces) return { ...c, stored: [...c.stored.filter((m) => m.id !== turn.replaces), reply], turns };
    return { ...c, stored: [...c.stored, user, reply], turns };
  });
}

/** Create the conversation first when there is none yet; returns its id at once, the reply streams on. */
export async function send(conversationId: string | null, options: SendOptions): Promise<string> {
  let id = conversationId;
  if (!id) {
    const created = await api.createConversation();
    id = created.id;
    upsert(created);
    update(id, (c) => ({ ...c, loaded: true, title: created.title }));
  }
  const convId = id;
  const firstExchange = chatOf(convId).stored.length === 0 && chatOf(convId).turns.length === 0;
  stream(convId, newTurn(`t${++counter}`, options.content), options, firstExchange);
  return convId;
}

/** Generate the last reply again: the new one streams in its place, and replaces it once the server stored it. */
export function regenerate(conversationId: string, question: Message, reply: Message, options: Omit<SendOptions, "content">): void {
  const turn = newTurn(`t${++counter}`, question.content, { question: question.id, reply: reply.id });
  stream(conversationId, turn, { ...options, content: "", regenerate: true }, false);
}

function stream(convId: string, turn: Turn, options: SendOptions, firstExchange: boolean): void {
  const localId = turn.localId;
  const controller = new AbortController();
  controllers.set(localId, controller);
  update(convId, (c) => ({ ...c, turns: [...c.turns, turn] }));
  void (async () => {
    try {
      await streamMessage(convId, options, (e) => updateTurn(convId, localId, (t) => applyEvent(t, e)), controller.signal);
    } catch (err) {
      if (!controller.signal.aborted) updateTurn(convId, localId, (t) => fail(t, asApiError(err).message));
    } finally {
      controllers.delete(localId);
      const turn = chatOf(convId).turns.find((t) => t.localId === localId);
      if (turn) {
        const finished = isLive(turn) ? fail(turn, "The reply ended unexpectedly. Please try again.") : turn;
        if (finished !== turn) updateTurn(convId, localId, () => finished);
        settle(convId, finished);
        if (finished.status !== "failed" || finished.userMessageId) {
          void refreshList(); // the conversation moved to the top
          const title = titleOf(convId);
          if (firstExchange || title === undefined || title === DEFAULT_TITLE) watchForTitle(convId);
        }
      }
    }
  })();
}

/** Stop the reply being received: the connection closes, the gateway stops the model; what came stays. */
export function stopReply(conversationId: string): void {
  const turn = liveTurn(conversationId);
  if (!turn) return;
  updateTurn(conversationId, turn.localId, stop);
  controllers.get(turn.localId)?.abort();
}

export function dismissFailed(conversationId: string, localId: string): void {
  update(conversationId, (c) => ({ ...c, turns: c.turns.filter((t) => t.localId !== localId) }));
}

export function setTitle(id: string, title: string): void {
  if (chats.get()[id]) update(id, (c) => ({ ...c, title }));
}

export function forget(id: string): void {
  for (const t of chatOf(id).turns) controllers.get(t.localId)?.abort();
  chats.set((all) => {
    const { [id]: _gone, ...rest } = all;
    return rest;
  });
}

export function forgetAll(): void {
  for (const c of controllers.values()) c.abort();
  controllers.clear();
  chats.set({});
}
