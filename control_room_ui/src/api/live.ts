// Change signals → query invalidation, kept narrow: a change of run R invalidates R's queries
// (those on screen refetch; the event log tails by cursor instead of refetching), and the
// workspace's lists on screen at most once a second. A poll tick (no feed) does the same for
// whatever is on screen.
import type { QueryClient, Query } from "@tanstack/react-query";
import type { Signal } from "./feed";

export const LIST_THROTTLE_MS = 1000;

/** Whether a query key belongs to run `runId` and is refetched on its change (not its event log). */
export function isRunQuery(key: readonly unknown[], runId: string | null): boolean {
  return key[0] === "run" && (runId === null || key[1] === runId) && key[2] !== "events";
}

/** Whether a query key is a list of workspace `ws` that a run change can alter. */
export function isWorkspaceList(key: readonly unknown[], ws: string): boolean {
  return key[0] === "ws" && key[1] === ws && key[2] !== "audit";
}

export function makeInvalidator(client: QueryClient, now: () => number = Date.now) {
  let lastList = 0;
  let pendingList: ReturnType<typeof setTimeout> | null = null;
  const pendingRuns = new Set<string>();
  let runTimer: ReturnType<typeof setTimeout> | null = null;

  const flushLists = (ws: string) => {
    pendingList = null;
    lastList = now();
    client.invalidateQueries({ predicate: (q: Query) => isWorkspaceList(q.queryKey, ws), refetchType: "active" });
  };

  return (s: Signal) => {
    if (s.run_id === null) {
      client.invalidateQueries({ predicate: (q: Query) => isRunQuery(q.queryKey, null), refetchType: "active" });
    } else {
      pendingRuns.add(s.run_id);
      if (!runTimer) {
        runTimer = setTimeout(() => {
          runTimer = null;
          const runs = new Set(pendingRuns);
          pendingRuns.clear();
          client.invalidateQueries({
            predicate: (q: Query) => q.queryKey[0] === "run" && runs.has(q.queryKey[1] as string) && q.queryKey[2] !== "events",
            refetchType: "active",
          });
        }, 50);
      }
    }
    const wait = LIST_THROTTLE_MS - (now() - lastList);
    if (pendingList) return;
    if (wait <= 0) flushLists(s.workspace_id);
    else pendingList = setTimeout(() => flushLists(s.workspace_id), wait);
  };
}
