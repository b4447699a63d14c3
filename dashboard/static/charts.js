// SVG charts built with createElementNS (no library, no HTML strings).
import { h, s } from './dom.js';
import { int } from './format.js';

/**
 * A 24-point sparkline. `values` oldest first, the last one is the current hour.
 * Returns an <svg> with role=img and a text label of the total.
 */
export function sparkline(values, { width = 96, height = 24, kind = '' } = {}) {
  const vals = Array.isArray(values) && values.length ? values.map((v) => Number(v) || 0) : new Array(24).fill(0);
  const max = Math.max(1, ...vals);
  const total = vals.reduce((a, b) => a + b, 0);
  const step = vals.length > 1 ? width / (vals.length - 1) : width;
  const pad = 2;
  const y = (v) => (height - pad - (v / max) * (height - 2 * pad)).toFixed(1);
  const pts = vals.map((v, i) => `${(i * step).toFixed(1)},${y(v)}`);
  const area = `M0,${height} L${pts.join(' L')} L${width},${height} Z`;
  const svg = s('svg', {
    class: ['spark', kind && `spark-${kind}`],
    viewBox: `0 0 ${width} ${height}`,
    width, height,
    role: 'img',
    'aria-label': `${int(total)} events in the last 24 hours`,
    preserveAspectRatio: 'none',
  },
  s('title', null, `${int(total)} events in the last 24 h`),
  s('path', { class: 'spark-area', d: area }),
  s('polyline', { class: 'spark-line', points: pts.join(' ') }));
  return svg;
}

/**
 * A bar chart of events per hour. `values` oldest first; the last bar is the
 * hour that contains `end` (a Date). Each bar has a <title> tooltip. The SVG
 * stretches to its container's width; day labels are HTML so they do not
 * stretch with it.
 */
export function hourlyBars(values, { end = new Date(), height = 110 } = {}) {
  const vals = (values || []).map((v) => Number(v) || 0);
  const n = Math.max(vals.length, 1);
  const slot = 10;
  const barW = 7;
  const width = n * slot;
  const max = Math.max(1, ...vals);
  const total = vals.reduce((a, b) => a + b, 0);
  const endHour = new Date(end);
  endHour.setUTCMinutes(0, 0, 0);
  const svg = s('svg', {
    class: 'bars',
    viewBox: `0 0 ${width} ${height}`,
    preserveAspectRatio: 'none',
    height,
    role: 'img',
    'aria-label': `${int(total)} events over the last ${n <= 48 ? `${n} hours` : `${Math.round(n / 24)} days`}, at most ${int(max)} in one hour`,
  });
  for (const f of [0.5, 1]) {
    const gy = (height - f * (height - 2)).toFixed(1);
    svg.appendChild(s('line', { class: 'bars-grid', x1: 0, x2: width, y1: gy, y2: gy }));
  }
  const labels = h('div', { class: 'bars-labels', 'aria-hidden': 'true' });
  vals.forEach((v, i) => {
    const hour = new Date(endHour.getTime() - (n - 1 - i) * 3600e3);
    const x = i * slot;
    // Day labels at UTC midnight over days; hour labels every 6 h over a day.
    const short = n <= 48;
    const mark = short ? hour.getUTCHours() % 6 === 0 : hour.getUTCHours() === 0;
    if (mark) {
      svg.appendChild(s('line', { class: 'bars-day', x1: x, x2: x, y1: 0, y2: height }));
      if (i < n - (short ? 2 : 12)) {
        const text = short
          ? `${String(hour.getUTCHours()).padStart(2, '0')}:00`
          : hour.toLocaleDateString('en-US', { month: 'short', day: 'numeric', timeZone: 'UTC' });
        labels.appendChild(h('span', { class: !short && Math.round(i / 24) % 3 ? 'lbl-sec' : null, style: { left: `${(100 * i) / n}%` } }, text));
      }
    }
    const bh = v > 0 ? Math.max(2, (v / max) * (height - 2)) : 0;
    svg.appendChild(s('g', { class: 'bar' },
      s('title', null, `${hour.toISOString().slice(0, 13).replace('T', ' ')}:00 UTC: ${int(v)} event${v === 1 ? '' : 's'}`),
      s('rect', { class: 'bar-hit', x, y: 0, width: slot, height }),
      v > 0 ? s('rect', { class: 'bar-fill', x: x + 1, y: (height - bh).toFixed(1), width: barW, height: bh.toFixed(1) }) : null));
  });
  return h('figure', { class: 'chart' },
    h('div', { class: 'chart-head' },
      h('span', { class: 'chart-max' }, `max ${int(max)}/h`)),
    svg,
    labels);
}

/**
 * Crash-free sessions over time, one line per series: `series` is
 * [{ name, points: [{ at: Date, rate: 0..1 | null, sessions }] }]. The y axis
 * runs from the lowest rate shown (at most 90%) to 100%. Each point has a
 * <title> tooltip; a legend names the lines.
 */
export function crashFreeLines(series, { width = 600, height = 160 } = {}) {
  const all = series.flatMap((s) => s.points.filter((p) => p.rate !== null));
  const times = all.map((p) => p.at.getTime());
  const t0 = Math.min(...times);
  const t1 = Math.max(...times);
  const low = Math.min(0.9, ...all.map((p) => p.rate));
  const pad = 6;
  const x = (t) => (t1 > t0 ? pad + ((t - t0) / (t1 - t0)) * (width - 2 * pad) : width / 2);
  const y = (r) => pad + ((1 - r) / (1 - low || 1)) * (height - 2 * pad);
  const pct = (r) => `${(r * 100).toFixed(r === 1 ? 0 : 2)}%`;
  const svg = s('svg', {
    class: 'lines',
    viewBox: `0 0 ${width} ${height}`,
    preserveAspectRatio: 'none',
    height,
    role: 'img',
    'aria-label': `Crash-free sessions of ${series.length} release${series.length === 1 ? '' : 's'}, from ${pct(low)} to 100%`,
  });
  for (const r of [1, (1 + low) / 2, low]) {
    svg.appendChild(s('line', { class: 'bars-grid', x1: 0, x2: width, y1: y(r).toFixed(1), y2: y(r).toFixed(1) }));
  }
  const legend = h('ul', { class: 'lines-legend' });
  series.forEach((one, i) => {
    const pts = one.points.filter((p) => p.rate !== null);
    const cls = `line-${i % 6}`;
    svg.appendChild(s('polyline', {
      class: ['line', cls],
      points: pts.map((p) => `${x(p.at.getTime()).toFixed(1)},${y(p.rate).toFixed(1)}`).join(' '),
    }));
    for (const p of pts) {
      // A round-capped stub: a dot that the stretched viewBox does not distort.
      const px = x(p.at.getTime());
      svg.appendChild(s('line', { class: ['line-dot', cls], x1: px.toFixed(2), x2: (px + 0.01).toFixed(2), y1: y(p.rate).toFixed(1), y2: y(p.rate).toFixed(1) },
        s('title', null, `${one.name}, ${p.at.toISOString().slice(0, 10)}: ${pct(p.rate)} crash-free of ${int(p.sessions)} session${p.sessions === 1 ? '' : 's'}`)));
    }
    legend.appendChild(h('li', null, h('span', { class: ['swatch', cls], 'aria-hidden': 'true' }), one.name));
  });
  return h('figure', { class: 'chart' },
    h('div', { class: 'chart-head' }, h('span', { class: 'chart-max' }, `${pct(low)} to 100%`)),
    svg,
    legend);
}
