// What a role may do, as the server decides it (the UI only hides; the server refuses).
import type { Role } from "../api/types";

export type Action = "cancel" | "retry" | "repair" | "launch" | "unblock" | "audit";

export function can(role: Role | null | undefined, action: Action): boolean {
  if (!role) return false;
  if (action === "unblock" || action === "audit") return role === "admin";
  return role === "developer" || role === "admin";
}

/** The run actions that apply to a run in `state` (before the role is considered). */
export function runActions(state: string): { cancel: boolean; retry: boolean; repair: boolean } {
  return {
    cancel: state === "queued" || state === "running",
    retry: state === "failed" || state === "cancelled",
    repair: state === "failed" || state === "cancelled",
  };
}
