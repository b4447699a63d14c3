// Issue list: for one class or for everything, with filters, sort and
// cursor pagination (the collector pages with an opaque cursor).
import { h, replace, keepFocus } from '../dom.js';
import { api } from '../api.js';
import { sparkline } from '../charts.js';
import { int, compact } from '../format.js';
import {
  state, project, href, kindBadge, levelBadge, statusBadge, regressionBadge,
  timeAgo, noErrorsYet, emptyState, errorBox, live,
} from '../shell.js';

const STATUSES = [['unresolved', 'Unresolved'], ['resolved', 'Resolved'], ['muted', 'Muted'], ['all', 'All']];
const SORTS = [['last_seen', 'Last seen'], ['first_seen', 'First seen'], ['count', 'Events']];
const LEVELS = ['fatal', 'error', 'warning', 'info', 'debug'];
const FILTER_KEYS = ['status', 'class', 'level', 'environment', 'release', 'query', 'sort', 'assigned'];

// Cursor bookkeeping so "Previous" works: next cursor -> [previous cursor, page number].
const pages = new Map();

function readParams(q) {
  const p = {};
  for (const k of [...FILTER_KEYS, 'cursor']) p[k] = q.get(k) || '';
  if (!STATUSES.some(([k]) => k === p.status)) p.status = 'unresolved';
  if (!SORTS.some(([k]) => k === p.sort)) p.sort = 'last_seen';
  return p;
}

function toUrl(p, extra = {}) {
  const out = { ...p, ...extra };
  if (out.status === 'unresolved') out.status = '';
  if (out.sort === 'last_seen') out.sort = '';
  return href('/issues', out);
}

export async function issuesView(ctx) {
  const pid = state.pid;
  let params = readParams(ctx.query);
  let shownIds = null;

  const title = h('h1');
  const sub = h('p', { class: 'muted page-sub' });
  const statusNav = h('nav', { class: 'segmented', 'aria-label': 'Status' });
  const search = h('input', { type: 'search', name: 'query', placeholder: 'Search title, culprit, class   ( / )', 'aria-label': 'Search issues', autocomplete: 'off', spellcheck: 'false' });
  const mkSelect = (name, label, options) => h('select', { name, 'aria-label': label },
    options.map(([v, t]) => h('option', { value: v }, t)));
  const level = mkSelect('level', 'Level', [['', 'Any level'], ...LEVELS.map((l) => [l, l])]);
  const environment = mkSelect('environment', 'Environment', [['', 'Any environment']]);
  const release = mkSelect('release', 'Release', [['', 'Any release']]);
  const sort = mkSelect('sort', 'Sort by', SORTS.map(([k, t]) => [k, `Sort: ${t}`]));
  const mine = h('input', { type: 'checkbox', id: 'assigned-me', name: 'assigned', value: 'me' });
  const mineLabel = h('label', { for: 'assigned-me', class: 'check' }, mine, ' Assigned to me');
  mine.addEventListener('change', () => apply({ assigned: mine.checked ? 'me' : '', query: search.value.trim() }));
  const clear = h('a', { class: 'btn btn-quiet', href: '/issues' }, 'Clear');
  const filters = h('form', { class: 'filters', role: 'search' },
    search, level, environment, release, sort, mineLabel,
    h('button', { type: 'submit', class: 'btn' }, 'Filter'), clear);
  const listSlot = h('div', { class: 'list-slot', 'aria-live': 'off' });
  const classSlot = h('div', { class: 'class-summary' });

  // With a class filter: the class's kind, totals and last 24 hours above the list.
  async function loadClass() {
    if (!params.class) { classSlot.hidden = true; return; }
    let list;
    try { list = await api.classes(pid, 'all'); } catch (e) { if (e.status === 401) throw e; return; }
    const c = (list || []).find((x) => x.class === params.class);
    if (!ctx.alive() || !c) { classSlot.hidden = true; return; }
    classSlot.hidden = false;
    replace(classSlot,
      kindBadge(c.kind),
      h('span', { class: 'class-summary-fig' }, h('strong', { class: 'num' }, int(c.issues)), c.issues === 1 ? ' issue' : ' issues'),
      h('span', { class: 'class-summary-fig' }, h('strong', { class: 'num' }, int(c.events)), c.events === 1 ? ' event' : ' events'),
      h('span', { class: 'class-summary-fig muted' }, 'last ', timeAgo(c.last_seen)),
      sparkline(c.hourly, { kind: c.kind === 'programmer' ? 'programmer' : 'operational', width: 160 }));
  }
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' });

  const apply = (changes, opts) => ctx.navigate(toUrl({ ...params, ...changes, cursor: '' }), opts);
  let typing = null;
  filters.addEventListener('submit', (e) => {
    e.preventDefault();
    clearTimeout(typing);
    apply({ query: search.value.trim() });
  });
  // Search as you type, once typing pauses (the history gets one entry, not one per key).
  search.addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      const q = search.value.trim();
      if (q !== params.query) apply({ query: q }, { replace: Boolean(params.query) && Boolean(q) });
    }, 350);
  });
  for (const sel of [level, environment, release, sort]) {
    sel.addEventListener('change', () => apply({ [sel.name]: sel.value, query: search.value.trim() }));
  }

  // Filter menus from the tag values (best effort: the list works without
  // them), asked for after the first rows so they do not delay them.
  const loadMenus = () => {
    for (const [key, sel] of [['environment', environment], ['release', release]]) {
      api.tagValues(pid, key).then((vals) => {
        for (const v of vals || []) {
          if (![...sel.options].some((o) => o.value === v.value)) sel.appendChild(h('option', { value: v.value }, v.value));
        }
        sel.value = params[key];
      }).catch(() => {});
    }
  };

  function syncControls() {
    const cls = params.class;
    replace(title, cls ? h('span', { class: 'mono' }, cls) : 'Issues');
    replace(sub, cls ? [h('a', { href: '/' }, 'All classes'), ' · issues of this class'] : 'Every issue of the project');
    replace(statusNav, ...STATUSES.map(([k, t]) => h('a', { href: toUrl(params, { status: k, cursor: '' }), 'aria-current': k === params.status ? 'page' : null }, t)));
    if (document.activeElement !== search) search.value = params.query;
    level.value = params.level;
    for (const [k, sel] of [['environment', environment], ['release', release]]) {
      if (params[k] && ![...sel.options].some((o) => o.value === params[k])) sel.appendChild(h('option', { value: params[k] }, params[k]));
      sel.value = params[k];
    }
    sort.value = params.sort;
    mine.checked = params.assigned === 'me';
    clear.hidden = !['level', 'environment', 'release', 'query', 'assigned'].some((k) => params[k]);
    clear.setAttribute('href', toUrl({ status: params.status, class: params.class, sort: params.sort }));
  }

  async function load() {
    const q = {};
    for (const k of FILTER_KEYS) q[k] = params[k];
    q.cursor = params.cursor;
    q.limit = 50;
    let res;
    const statsP = api.stats(pid).catch(() => null);
    try {
      res = await api.issues(pid, q);
    } catch (e) {
      if (!ctx.alive()) return;
      if (e.status === 401) throw e;
      replace(listSlot, errorBox(e));
      pager.replaceChildren();
      return;
    }
    if (!ctx.alive()) return;
    renderList(res.data || [], res.next_cursor || null);
    statsP.then((st) => { if (ctx.alive()) live.observe(st); });
  }

  function filtered() {
    return ['class', 'level', 'environment', 'release', 'query', 'assigned'].some((k) => params[k]) || params.status !== 'unresolved';
  }

  function renderList(issues, next) {
    const prevIds = shownIds;
    shownIds = new Set(issues.map((i) => i.id));
    const info = pages.get(params.cursor) || [null, 1];
    if (next) pages.set(next, [params.cursor, info[1] + 1]);

    if (!issues.length) {
      if (params.cursor) {
        replace(listSlot, emptyState('No more issues', h('p', null, h('a', { href: toUrl(params, { cursor: '' }) }, 'Back to the first page'))));
      } else if (!filtered()) {
        replace(listSlot, noErrorsYet(project()));
      } else {
        replace(listSlot, emptyState('No issues match these filters',
          h('p', { class: 'muted' }, 'Try another status, or ',
            h('a', { href: href('/issues', { class: params.class, status: 'all' }) }, 'show every issue' + (params.class ? ' of this class' : '')), '.')));
      }
      pager.replaceChildren();
      return;
    }
    const rows = issues.map((i) => h('tr', {
      class: ['issue-row', prevIds && !prevIds.has(i.id) ? 'row-new' : null, i.kind === 'programmer' ? 'kind-row-programmer' : 'kind-row-operational'],
      'data-issue-id': String(i.id),
    },
    h('td', { class: 'issue-main' },
      h('div', { class: 'issue-title-line' },
        h('a', { class: 'issue-title', href: `/issues/${i.id}`, 'data-key': `issue:${i.id}` }, i.title || '(no title)'),
        regressionBadge(i.is_regression), statusBadge(i.status)),
      h('div', { class: 'issue-meta' },
        kindBadge(i.kind),
        h('a', { class: 'class-chip mono', href: toUrl({ ...params, class: i.class }, { cursor: '' }), title: `Only ${i.class}`, 'data-key': `chip:${i.id}` }, i.class),
        i.culprit ? h('span', { class: 'culprit mono', title: 'Top in-app frame' }, i.culprit) : null,
        i.assignee ? h('span', { class: 'assignee-chip', title: `Assigned to ${i.assignee.username}` }, '→ ', i.assignee.display_name || i.assignee.username) : null)),
    h('td', { class: 'level-cell' }, levelBadge(i.level)),
    h('td', { class: 'r num count-cell', title: `${int(i.count)} events` }, compact(i.count)),
    h('td', { class: 'when' }, h('span', { class: 'when-label' }, 'last '), timeAgo(i.last_seen)),
    h('td', { class: 'when when-first' }, h('span', { class: 'when-label' }, 'first '), timeAgo(i.first_seen)),
    h('td', { class: 'spark-col' }, sparkline(i.hourly, { kind: i.kind === 'programmer' ? 'programmer' : 'operational' }))));
    keepFocus(listSlot, () => replace(listSlot, h('div', { class: 'table-wrap' }, h('table', { class: 'table issues' },
      h('thead', null, h('tr', null,
        h('th', { scope: 'col' }, 'Issue'),
        h('th', { scope: 'col' }, 'Level'),
        h('th', { scope: 'col', class: 'r' }, 'Events'),
        h('th', { scope: 'col' }, 'Last seen'),
        h('th', { scope: 'col', class: 'when-first' }, 'First seen'),
        h('th', { scope: 'col', class: 'spark-col' }, '24 h'))),
      h('tbody', null, rows)))));
    const first = (info[1] - 1) * 50 + 1;
    keepFocus(pager, () => replace(pager,
      params.cursor
        ? h('a', { class: 'btn', href: toUrl(params, { cursor: info[0] || '' }), rel: 'prev', 'data-key': 'prev' }, '← Previous')
        : h('span', { class: 'btn', 'aria-disabled': 'true' }, '← Previous'),
      h('span', { class: 'pager-info num' }, `${int(first)}–${int(first + issues.length - 1)}`),
      next
        ? h('a', { class: 'btn', href: toUrl(params, { cursor: next }), rel: 'next', 'data-key': 'next' }, 'Next →')
        : h('span', { class: 'btn', 'aria-disabled': 'true' }, 'Next →')));
    if (listSlot.isConnected) markRows();
  }

  // For the browser test's timing: the frame that first paints rows in this
  // document ("errscope:first-rows"), and every later one ("errscope:rows").
  function markRows() {
    requestAnimationFrame(() => {
      if (!performance.getEntriesByName('errscope:first-rows').length) performance.mark('errscope:first-rows');
      performance.mark('errscope:rows');
    });
  }

  syncControls();
  await load();
  if (!ctx.alive()) return {};
  loadMenus();
  replace(ctx.main, h('div', { class: 'page' },
    h('div', { class: 'page-head' }, h('div', null, title, sub), statusNav),
    classSlot, filters, listSlot, pager));
  if (listSlot.querySelector('tr.issue-row')) markRows();
  loadClass();

  return {
    refresh: () => Promise.all([load(), loadClass()]),
    accepts: () => true,
    async update(next) {
      const before = params;
      params = readParams(next.query);
      ctx = { ...ctx, alive: next.alive };
      const onlyCursor = FILTER_KEYS.every((k) => before[k] === params[k]);
      shownIds = null;
      syncControls();
      if (before.class !== params.class) loadClass();
      listSlot.setAttribute('aria-busy', 'true');
      await load();
      listSlot.removeAttribute('aria-busy');
      if (onlyCursor) window.scrollTo(0, 0);
    },
  };
}
