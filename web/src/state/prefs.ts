// Preferences (not secrets): the model picked, the generation settings, the theme. Kept in localStorage.

import { api } from "../api/client";
import { asApiError, type ApiError } from "../api/errors";
import { Store } from "./store";

function read(key: string): string | null {
  try {
    return localStorage.getItem(key);
  } catch {
    return null;
  }
}

function write(key: string, value: string | null): void {
  try {
    if (value === null) localStorage.removeItem(key);
    else localStorage.setItem(key, value);
  } catch {
    /* storage off: the choice lasts as long as the page */
  }
}

export interface ModelsState {
  ids: string[];
  selected: string;
  error: ApiError | null;
  loaded: boolean;
}

export const models = new Store<ModelsState>({ ids: [], selected: read("chatplane.model") ?? "", error: null, loaded: false });

export async function loadModels(): Promise<void> {
  try {
    const ids = (await api.models()).data.map((m) => m.id);
    models.set((s) => ({ ids, selected: ids.includes(s.selected) ? s.selected : (ids[0] ?? ""), error: null, loaded: true }));
  } catch (err) {
    models.set((s) => ({ ...s, error: asApiError(err), loaded: true }));
  }
}

export function selectModel(id: string): void {
  write("chatplane.model", id);
  models.set((s) => ({ ...s, selected: id }));
}

/** Generation settings: unset means the API's defaults (nothing is sent). */
export interface GenerationSettings {
  temperature?: number;
  maxTokens?: number;
}

function readSettings(): GenerationSettings {
  try {
    const v = JSON.parse(read("chatplane.settings") ?? "{}") as GenerationSettings;
    return {
      temperature: typeof v.temperature === "number" ? v.temperature : undefined,
      maxTokens: typeof v.maxTokens === "number" ? v.maxTokens : undefined,
    };
  } catch {
    return {};
  }
}

export const generation = new Store<GenerationSettings>(readSettings());

export function setGeneration(next: GenerationSettings): void {
  write("chatplane.settings", JSON.stringify(next));
  generation.set(next);
}

export type Theme = "light" | "dark";

function systemDark(): boolean {
  return typeof window !== "undefined" && window.matchMedia("(prefers-color-scheme: dark)").matches;
}

export const theme = new Store<Theme>(
  typeof document !== "undefined" && document.documentElement.classList.contains("dark") ? "dark" : "light",
);

export function setTheme(next: Theme): void {
  write("chatplane.theme", next === (systemDark() ? "dark" : "light") ? null : next); // the system's: follow it
  document.documentElement.classList.toggle("dark", next === "dark");
  theme.set(next);
}
