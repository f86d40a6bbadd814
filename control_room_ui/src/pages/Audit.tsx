import { useState } from "react";
import { keepPreviousData, useQuery } from "@tanstack/react-query";
import { rpc } from "../api/client";
import type { AuditPage as Page } from "../api/types";
import { useWorkspace } from "../api/workspace";
import { Empty, Gate } from "../components/common";
import { formatTime } from "../lib/format";

export function AuditPage() {
  const { current } = useWorkspace();
  const ws = current!.id;
  const [fn, setFn] = useState("");
  const [applied, setApplied] = useState("");
  const [befores, setBefores] = useState<(number | null)[]>([null]);
  const before = befores[befores.length - 1];
  const args: Record<string, unknown> = { workspace_id: ws, limit: 100 };
  if (before !== null) args.before = before;
  if (applied) args.function_name = applied;
  const q = useQuery({ queryKey: ["ws", ws, "audit", args], queryFn: ({ signal }) => rpc<Page>("list_audit", args, signal), placeholderData: keepPreviousData });
  return (
    <div className="page">
      <div className="page-head">
        <h2>Audit log</h2>
        <form onSubmit={(e) => { e.preventDefault(); setApplied(fn.trim()); setBefores([null]); }}>
          <input placeholder="function (e.g. cancel_run)" value={fn} onChange={(e) => setFn(e.target.value)} data-testid="audit-filter-function" />
        </form>
      </div>
      <Gate q={q}>
        {() =>
          !q.data?.entries.length ? <Empty>No audit entries.</Empty> : (
            <>
              <table className="grid-table">
                <thead><tr><th>When</th><th>Who</th><th>Did</th><th>On</th><th>Details</th></tr></thead>
                <tbody>
                  {q.data.entries.map((e) => (
                    <tr key={e.id} data-testid="audit-row" data-function={e.function_name}>
                      <td className="nowrap">{formatTime(e.at)}</td>
                      <td>{e.actor ? (e.actor.email ?? e.actor.name ?? e.actor.id) : <span className="muted">{e.db_role ?? "–"}</span>}</td>
                      <td className="mono">{e.function_name}</td>
                      <td>{e.target_type ? `${e.target_type} ` : ""}<span className="mono small">{e.target_id ?? ""}</span></td>
                      <td className="small clip" title={e.details ? JSON.stringify(e.details) : ""}>{e.details ? JSON.stringify(e.details) : ""}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
              <div className="pager">
                <button disabled={befores.length <= 1} onClick={() => setBefores(befores.slice(0, -1))}>← Newer</button>
                <button disabled={!q.data.next_before} onClick={() => setBefores([...befores, q.data!.next_before])}>Older →</button>
              </div>
            </>
          )
        }
      </Gate>
    </div>
  );
}
