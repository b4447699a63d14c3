// Number and time formatting.

const intFmt = new Intl.NumberFormat('en-US');

/** 10512 -> "10,512". */
export function int(n) {
  return intFmt.format(Number(n) || 0);
}

/** 10512 -> "10.5k", for dense columns (the exact figure goes in a title). */
export function compact(n) {
  n = Number(n) || 0;
  if (n < 1000) return String(n);
  if (n < 10000) return (n / 1000).toFixed(1).replace(/\.0$/, '') + 'k';
  if (n < 1e6) return Math.round(n / 1000) + 'k';
  if (n < 1e7) return (n / 1e6).toFixed(1).replace(/\.0$/, '') + 'M';
  return Math.round(n / 1e6) + 'M';
}

/** Parses an RFC 3339 string or epoch seconds (number or numeric string) to a Date. */
export function toDate(t) {
  if (t === null || t === undefined || t === '') return null;
  if (typeof t === 'number') return new Date(t * 1000);
  if (/^\d+(\.\d+)?$/.test(String(t))) return new Date(Number(t) * 1000);
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? null : d;
}

/** "3 min ago", "2 h ago", "5 d ago". */
export function ago(t, now = Date.now()) {
  const d = toDate(t);
  if (!d) return '—';
  const s = Math.round((now - d.getTime()) / 1000);
  if (s < 0) return 'just now';
  if (s < 45) return s <= 5 ? 'just now' : `${s} s ago`;
  const m = Math.round(s / 60);
  if (m < 60) return `${m} min ago`;
  const hrs = Math.round(m / 60);
  if (hrs < 48) return `${hrs} h ago`;
  const days = Math.round(hrs / 24);
  if (days < 60) return `${days} d ago`;
  return d.toISOString().slice(0, 10);
}

/** "2026-11-22 10:15:00 UTC". */
export function absolute(t) {
  const d = toDate(t);
  if (!d) return '';
  return d.toISOString().replace('T', ' ').replace(/\.\d+Z$|Z$/, '') + ' UTC';
}

/** "10:15:02.123" (UTC), for breadcrumbs. */
export function clock(t) {
  const d = toDate(t);
  if (!d) return '';
  return d.toISOString().slice(11, 23);
}
