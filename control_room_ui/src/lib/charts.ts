// Scales for the plain-SVG charts of the health page.
export interface Scale {
  (v: number): number;
  ticks: number[];
}

/** A nice upper bound ≥ max (1, 2, 2.5, 5 × 10^k). */
export function niceMax(max: number): number {
  if (!(max > 0)) return 1;
  const exp = Math.floor(Math.log10(max));
  const base = 10 ** exp;
  for (const m of [1, 2, 2.5, 5, 10]) if (m * base >= max) return m * base;
  return 10 * base;
}

export function linearScale(max: number, pixels: number, count = 4): Scale {
  const top = niceMax(max);
  const f = ((v: number) => pixels - (v / top) * pixels) as Scale;
  f.ticks = Array.from({ length: count + 1 }, (_, i) => (top / count) * i);
  return f;
}

export interface SeriesPoint {
  t: number;
  values: (number | null)[];
}

/** An SVG polyline path for one series (gaps where values are null). */
/** The points no line passes through (both neighbours missing): drawn as dots, or a bucket
 * with data between empty ones would not show at all. */
export function isolatedPoints(points: { x: number; y: number | null }[]): { x: number; y: number }[] {
  const has = (i: number) => i >= 0 && i < points.length && points[i].y !== null && Number.isFinite(points[i].y);
  return points.flatMap((p, i) => (has(i) && !has(i - 1) && !has(i + 1) ? [{ x: p.x, y: p.y as number }] : []));
}

export function linePath(points: { x: number; y: number | null }[]): string {
  let d = "";
  let pen = false;
  for (const p of points) {
    if (p.y === null || !Number.isFinite(p.y)) {
      pen = false;
      continue;
    }
    d += `${pen ? "L" : "M"}${p.x.toFixed(1)},${p.y.toFixed(1)}`;
    pen = true;
  }
  return d;
}
