// The signed-in principal's workspaces (list_workspaces, with its role in each) and the one
// selected (remembered per browser in localStorage by slug).
import { createContext, useContext } from "react";
import type { Role, Workspace } from "./types";

export interface WorkspaceCtx {
  workspaces: Workspace[];
  current: Workspace | null;
  role: Role | null;
  select: (slug: string) => void;
}

export const WorkspaceContext = createContext<WorkspaceCtx>({ workspaces: [], current: null, role: null, select: () => undefined });

export function useWorkspace(): WorkspaceCtx {
  return useContext(WorkspaceContext);
}

const KEY = "control-room.workspace";

export function rememberedSlug(): string | null {
  try {
    return localStorage.getItem(KEY);
  } catch {
    return null;
  }
}

export function rememberSlug(slug: string): void {
  try {
    localStorage.setItem(KEY, slug);
  } catch {
    // not remembered
  }
}

/** The workspace to show: ?ws=slug, else the remembered one, else the first. */
export function pickWorkspace(list: Workspace[], wanted: string | null, remembered: string | null): Workspace | null {
  return list.find((w) => w.slug === wanted) ?? list.find((w) => w.slug === remembered) ?? list[0] ?? null;
}
