// Releases: sessions, crash-free rate, adoption and new issues per release
// (release health from the SDKs' session updates), with crash-free sessions
// over time; one environment or all, over 14, 30 or 90 days.
import { h, replace } from '../dom.js';
import { api } from '../api.js';
import { state, timeAgo, emptyState } from '../shell.js';
import { int } from '../format.js';
import { crashFreeLines } from '../charts.js';

/** At most this many releases get a line in the chart (the most sessions). */
const CHART_LINES = 6;

function pct(rate) {
  if (rate === null || rate === undefined) return '–';
  return `${(rate * 100).toFixed(rate === 1 ? 0 : 2)}%`;
}

function rateClass(rate) {
  if (rate === null || rate === undefined) return 'muted';
  return rate >= 0.99 ? 'rate-good' : rate >= 0.95 ? 'rate-fair' : 'rate-bad';
}

export async function releasesView(ctx) {
  const root = h('div', { class: 'page' });
  const pid = state.pid;
  const params = new URLSearchParams(location.search);
  let days = params.get('days') || '14';
  let environment = params.get('environment') || '';
  let environments = new Set();

  function controls() {
    const period = h('select', { 'aria-label': 'Period' },
      ['14', '30', '90'].map((d) => h('option', { value: d, selected: d === days }, `Last ${d} days`)));
    period.addEventListener('change', () => { days = period.value; load(); });
    const env = h('select', { 'aria-label': 'Environment' },
      h('option', { value: '', selected: environment === '' }, 'All environments'),
      [...environments].sort().map((e) => h('option', { value: e, selected: e === environment }, e || '(none)')));
    env.addEventListener('change', () => { environment = env.value; load(); });
    return h('div', { class: 'filters' }, period, env);
  }

  async function load() {
    const list = await api.releases(pid, { days, environment });
    if (!ctx.alive()) return;
    for (const r of list) for (const e of r.environments || []) environments.add(e.environment || '');
    const rows = list.map((r) => h('tr', { 'data-release': r.version },
      h('td', null, h('div', { class: 'release-name mono' }, r.version),
        r.last_seen ? h('div', { class: 'muted' }, 'last seen ', timeAgo(r.last_seen)) : null),
      h('td', { class: 'r' }, int(r.sessions)),
      h('td', { class: ['r', 'crash-free', rateClass(r.crash_free_rate)] }, pct(r.crash_free_rate)),
      h('td', { class: 'r adoption' }, r.adoption === null ? '–' : pct(r.adoption)),
      h('td', { class: 'r' }, int(r.crashed)),
      h('td', { class: 'r' }, int(r.abnormal)),
      h('td', { class: 'r' }, int(r.errored)),
      h('td', { class: 'r' }, r.users === null ? '–' : int(r.users)),
      h('td', { class: 'new-issues' }, r.new_issues
        ? h('span', null, h('strong', null, int(r.new_issues)), ' ',
          r.new_issue_ids.map((id) => h('a', { href: `/issues/${id}`, class: 'issue-link' }, `#${id}`)))
        : h('span', { class: 'muted' }, '0'))));
    const charted = [...list].filter((r) => r.sessions > 0)
      .sort((a, b) => b.sessions - a.sessions).slice(0, CHART_LINES)
      .map((r) => ({
        name: r.version,
        points: (r.series || []).map((p) => ({ at: new Date(p.day), rate: p.crash_free_rate, sessions: p.sessions })),
      }));
    replace(root,
      h('div', { class: 'page-head' }, h('div', null,
        h('h1', null, 'Releases'),
        h('p', { class: 'muted page-sub' }, 'Crash-free sessions, adoption and the new issues of each release, from the session updates of errscope agents and Sentry SDKs.')),
      controls()),
      list.length
        ? [
          charted.length ? h('section', { class: 'card chart-card', 'aria-label': 'Crash-free sessions over time' },
            h('h2', { class: 'card-title' }, 'Crash-free sessions per day'), crashFreeLines(charted)) : null,
          h('div', { class: 'table-wrap' }, h('table', { class: 'table releases-table' },
            h('thead', null, h('tr', null,
              h('th', null, 'Release'), h('th', { class: 'r' }, 'Sessions'), h('th', { class: 'r' }, 'Crash-free'),
              h('th', { class: 'r' }, 'Adoption'), h('th', { class: 'r' }, 'Crashed'), h('th', { class: 'r' }, 'Abnormal'),
              h('th', { class: 'r' }, 'Errored'), h('th', { class: 'r' }, 'Users'), h('th', null, 'New issues'))),
            h('tbody', null, rows))),
        ]
        : emptyState('No releases in this period',
          h('p', { class: 'muted' }, 'Set a release in the agent (Options::release) or the SDK; sessions are sent at start and end of each run.')));
  }

  await load();
  if (!ctx.alive()) return {};
  replace(ctx.main, root);
  return { refresh: load };
}
