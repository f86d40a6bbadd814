// Plain-SVG charts: stacked bars over time and lines over time, and horizontal bars.
import { isolatedPoints, linePath, linearScale } from "../lib/charts";
import { formatDuration } from "../lib/format";

const W = 560;
const H = 150;
const PAD = { l: 44, r: 8, t: 8, b: 20 };

function timeLabel(ts: string): string {
  const d = new Date(ts);
  return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
}

export interface SeriesDef {
  key: string;
  label: string;
  cls: string;
}

export function StackedBars({ name, title, buckets, series }: { name: string; title: string; buckets: { bucket: string; [k: string]: unknown }[]; series: SeriesDef[] }) {
  const iw = W - PAD.l - PAD.r;
  const ih = H - PAD.t - PAD.b;
  const max = Math.max(1, ...buckets.map((b) => series.reduce((s, d) => s + (Number(b[d.key]) || 0), 0)));
  const y = linearScale(max, ih);
  const bw = buckets.length ? iw / buckets.length : iw;
  const every = Math.max(1, Math.ceil(buckets.length / 8));
  return (
    <figure className="chart" data-testid="chart" data-name={name}>
      <figcaption>
        {title}
        <span className="legend-inline">
          {series.map((s) => (
            <span key={s.key} className={`key ${s.cls}`}>{s.label}</span>
          ))}
        </span>
      </figcaption>
      <svg viewBox={`0 0 ${W} ${H}`} width="100%" preserveAspectRatio="none" role="img" aria-label={title}>
        <g transform={`translate(${PAD.l},${PAD.t})`}>
          {y.ticks.map((t) => (
            <g key={t}>
              <line x1={0} x2={iw} y1={y(t)} y2={y(t)} className="grid-line" />
              <text x={-4} y={y(t) + 3} className="axis" textAnchor="end">{Math.round(t * 10) / 10}</text>
            </g>
          ))}
          {buckets.map((b, i) => {
            let acc = 0;
            return (
              <g key={b.bucket}>
                {series.map((s) => {
                  const v = Number(b[s.key]) || 0;
                  const top = y(acc + v);
                  const h = y(acc) - top;
                  acc += v;
                  return v ? (
                    <rect key={s.key} x={i * bw + 1} y={top} width={Math.max(bw - 2, 1)} height={h} className={s.cls}>
                      <title>{`${timeLabel(b.bucket)} ${s.label}: ${v}`}</title>
                    </rect>
                  ) : null;
                })}
                {i % every === 0 ? <text x={i * bw + bw / 2} y={ih + 14} className="axis" textAnchor="middle">{timeLabel(b.bucket)}</text> : null}
              </g>
            );
          })}
        </g>
      </svg>
    </figure>
  );
}

export function Lines({ name, title, buckets, series, seconds }: { name: string; title: string; buckets: { bucket: string; [k: string]: unknown }[]; series: SeriesDef[]; seconds?: boolean }) {
  const iw = W - PAD.l - PAD.r;
  const ih = H - PAD.t - PAD.b;
  const vals = buckets.flatMap((b) => series.map((s) => Number(b[s.key])).filter((v) => Number.isFinite(v)));
  const y = linearScale(Math.max(1e-9, ...vals), ih);
  const x = (i: number) => (buckets.length <= 1 ? iw / 2 : (i / (buckets.length - 1)) * iw);
  const every = Math.max(1, Math.ceil(buckets.length / 8));
  return (
    <figure className="chart" data-testid="chart" data-name={name}>
      <figcaption>
        {title}
        <span className="legend-inline">
          {series.map((s) => (
            <span key={s.key} className={`key ${s.cls}`}>{s.label}</span>
          ))}
        </span>
      </figcaption>
      <svg viewBox={`0 0 ${W} ${H}`} width="100%" preserveAspectRatio="none" role="img" aria-label={title}>
        <g transform={`translate(${PAD.l},${PAD.t})`}>
          {y.ticks.map((t) => (
            <g key={t}>
              <line x1={0} x2={iw} y1={y(t)} y2={y(t)} className="grid-line" />
              <text x={-4} y={y(t) + 3} className="axis" textAnchor="end">{seconds ? formatDuration(t) : Math.round(t * 10) / 10}</text>
            </g>
          ))}
          {series.map((s) => {
            const points = buckets.map((b, i) => ({ x: x(i), y: b[s.key] === null || b[s.key] === undefined ? null : y(Number(b[s.key])) }));
            return (
              <g key={s.key}>
                <path d={linePath(points)} className={`line ${s.cls}`} />
                {isolatedPoints(points).map((p) => (
                  <circle key={p.x} cx={p.x} cy={p.y} r={3} className={`dot ${s.cls}`} />
                ))}
              </g>
            );
          })}
          {buckets.map((b, i) => (i % every === 0 ? <text key={b.bucket} x={x(i)} y={ih + 14} className="axis" textAnchor="middle">{timeLabel(b.bucket)}</text> : null))}
        </g>
      </svg>
    </figure>
  );
}

export function HBars({ name, title, rows }: { name: string; title: string; rows: { label: string; value: number | null; max: number; text: string; bad?: boolean }[] }) {
  return (
    <figure className="chart hbars" data-testid="chart" data-name={name}>
      <figcaption>{title}</figcaption>
      {rows.length ? (
        <div>
          {rows.map((r) => (
            <div key={r.label} className="hbar-row">
              <span className="hbar-label" title={r.label}>{r.label}</span>
              <span className="hbar-track">
                <span className={r.bad ? "hbar-fill bad" : "hbar-fill"} style={{ width: `${r.value === null ? 0 : Math.min((100 * r.value) / (r.max || 1), 100)}%` }} />
              </span>
              <span className="hbar-text">{r.text}</span>
            </div>
          ))}
        </div>
      ) : (
        <div className="muted small">no data</div>
      )}
    </figure>
  );
}
