import { useState } from "react";
import type { RunDetail } from "../../api/types";
import { Json, Section } from "../../components/common";

export function ManifestsTab({ run }: { run: RunDetail }) {
  const withOutput = run.phases.filter((p) => p.output_manifest);
  const [phase, setPhase] = useState(withOutput[0]?.name ?? "");
  const p = run.phases.find((x) => x.name === phase);
  return (
    <div className="manifests">
      <Section title="Input manifest" testid="input-manifest">
        <Json value={run.input_manifest} />
      </Section>
      <Section title="Output manifest" testid="output-manifest">
        {run.output_manifest ? <Json value={run.output_manifest} /> : <span className="muted">none yet (written when the run finishes)</span>}
      </Section>
      <Section
        title="Phase output manifests"
        actions={
          <select value={phase} onChange={(e) => setPhase(e.target.value)}>
            {withOutput.map((x) => (
              <option key={x.name}>{x.name}</option>
            ))}
          </select>
        }
      >
        {p?.output_manifest ? <Json value={p.output_manifest} /> : <span className="muted">no phase has an output manifest yet</span>}
      </Section>
    </div>
  );
}
