// Home page: the project's error classes, programmer vs operational.
import { h, replace, keepFocus } from '../dom.js';
import { api } from '../api.js';
import { sparkline } from '../charts.js';
import { int, compact } from '../format.js';
import { state, project, href, kindBadge, timeAgo, noErrorsYet, emptyState, live } from '../shell.js';

const plural = (n, one, many) => `${int(n)} ${n === 1 ? one : many}`;

const STATUSES = [
  ['unresolved', 'Unresolved'],
  ['all', 'All'],
  ['resolved', 'Resolved'],
  ['muted', 'Muted'],
];

export async function classesView(ctx) {
  const pid = state.pid;
  let status = ctx.query.get('status') || 'unresolved';
  if (!STATUSES.some(([k]) => k === status)) status = 'unresolved';
  const root = h('div', { class: 'page' });

  async function load() {
    const statsP = api.stats(pid).catch(() => null);
    const [classes, stats] = await Promise.all([api.classes(pid, status), statsP]);
    if (!ctx.alive()) return;
    render(classes || [], stats || live.stats);
    live.observe(stats);
  }

  function render(classes, stats) {
    const p = project();
    const prog = classes.filter((c) => c.kind === 'programmer');
    const oper = classes.filter((c) => c.kind !== 'programmer');
    const sum = (list, k) => list.reduce((a, c) => a + (Number(c[k]) || 0), 0);
    const discarded = (stats && Array.isArray(stats.discarded) ? stats.discarded : []).filter((d) => d.quantity > 0);

    const head = h('div', { class: 'page-head' },
      h('div', null,
        h('h1', null, 'Error classes'),
        h('p', { class: 'muted page-sub' }, p ? `Project ${p.name}` : '', ' · grouped by the type of the root error')),
      h('nav', { class: 'segmented', 'aria-label': 'Status' },
        STATUSES.map(([k, label]) => h('a', { href: href('/', { status: k === 'unresolved' ? '' : k }), 'aria-current': k === status ? 'page' : null, 'data-key': `status:${k}` }, label))));

    const summary = h('div', { class: 'summary' },
      h('div', { class: 'stat' }, h('span', { class: 'stat-label' }, 'Events'), h('span', { class: 'stat-value num' }, stats ? int(stats.events) : '—')),
      h('div', { class: 'stat' }, h('span', { class: 'stat-label' }, 'Issues'), h('span', { class: 'stat-value num' }, stats ? int(stats.issues) : '—')),
      h('div', { class: 'stat stat-programmer' },
        h('span', { class: 'stat-label' }, 'Programmer errors'),
        h('span', { class: 'stat-value num' }, int(sum(prog, 'events'))),
        h('span', { class: 'stat-note' }, `${plural(prog.length, 'class', 'classes')}, ${plural(sum(prog, 'issues'), 'issue', 'issues')}`)),
      h('div', { class: 'stat stat-operational' },
        h('span', { class: 'stat-label' }, 'Operational errors'),
        h('span', { class: 'stat-value num' }, int(sum(oper, 'events'))),
        h('span', { class: 'stat-note' }, `${plural(oper.length, 'class', 'classes')}, ${plural(sum(oper, 'issues'), 'issue', 'issues')}`)));

    const notice = discarded.length
      ? h('p', { class: 'notice' }, 'Agents discarded ',
        discarded.map((d, i) => [i ? ', ' : '', h('span', { class: 'num' }, int(d.quantity)), ` ${d.category || 'event'}${d.quantity === 1 ? '' : 's'} (${d.reason})`]),
        ' before sending them.')
      : null;

    let body;
    if (!classes.length) {
      if (!stats || !stats.events) body = noErrorsYet(p);
      else body = emptyState(status === 'unresolved' ? 'Nothing unresolved' : `No ${status} issues`,
        h('p', { class: 'muted' }, `This project has ${int(stats.issues)} issue${stats.issues === 1 ? '' : 's'}. `,
          h('a', { href: href('/', { status: 'all' }) }, 'Show every class'), '.'));
    } else {
      const issueStatus = status === 'unresolved' ? '' : status;
      body = h('div', { class: 'table-wrap' }, h('table', { class: 'table classes' },
        h('thead', null, h('tr', null,
          h('th', { scope: 'col' }, 'Class'),
          h('th', { scope: 'col' }, 'Kind'),
          h('th', { scope: 'col', class: 'r' }, 'Issues'),
          h('th', { scope: 'col', class: 'r' }, 'Events'),
          h('th', { scope: 'col' }, 'Last seen'),
          h('th', { scope: 'col', class: 'spark-col' }, '24 h'))),
        h('tbody', null, classes.map((c) => h('tr', { class: ['class-row', `kind-row-${c.kind === 'programmer' ? 'programmer' : 'operational'}`] },
          h('td', { class: 'class-cell' },
            h('a', { class: 'class-name', href: href('/issues', { class: c.class, status: issueStatus }), 'data-key': `class:${c.class}` }, c.class)),
          h('td', { class: 'kind-cell' }, kindBadge(c.kind)),
          h('td', { class: 'r num issues-cell', 'data-label': c.issues === 1 ? 'issue' : 'issues' }, int(c.issues)),
          h('td', { class: 'r num', 'data-label': c.events === 1 ? 'event' : 'events', title: int(c.events) }, compact(c.events)),
          h('td', { class: 'when' }, timeAgo(c.last_seen)),
          h('td', { class: 'spark-col' }, sparkline(c.hourly, { kind: c.kind === 'programmer' ? 'programmer' : 'operational' })))))));
    }
    keepFocus(root, () => replace(root, head, summary, notice, body));
  }

  await load();
  if (!ctx.alive()) return {};
  replace(ctx.main, root);
  return { refresh: load };
}
