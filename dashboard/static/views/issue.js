// Issue detail: header and actions, 14-day hourly chart, top tag values,
// and one event (the latest by default) with older/newer navigation.
import { h, replace, keepFocus } from '../dom.js';
import { api } from '../api.js';
import { hourlyBars } from '../charts.js';
import { int, compact } from '../format.js';
import {
  state, href, kindBadge, levelBadge, regressionBadge, timeAgo,
  errorBox, toast, selectProject, renderHeader, live, can,
} from '../shell.js';
import { render as markdown } from '../markdown.js';
import { renderEvent } from './event.js';

const TAG_ORDER = ['environment', 'release', 'server_name', 'domain'];
const TAG_LABEL = { server_name: 'server' };

function tagSummary(tags) {
  const keys = Object.keys(tags || {}).filter((k) => Array.isArray(tags[k]) && tags[k].length);
  keys.sort((a, b) => {
    const ia = TAG_ORDER.indexOf(a); const ib = TAG_ORDER.indexOf(b);
    return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
  });
  if (!keys.length) return h('p', { class: 'muted' }, 'No tags yet.');
  return h('div', { class: 'tag-dist' }, keys.map((k) => {
    const vals = tags[k];
    const total = vals.reduce((a, v) => a + (Number(v.count) || 0), 0) || 1;
    return h('div', { class: 'tag-key' },
      h('h4', null, TAG_LABEL[k] || k),
      h('ul', null, vals.map((v) => {
        const pct = Math.round((100 * (Number(v.count) || 0)) / total);
        return h('li', { class: 'tag-val', title: `${v.value}: ${int(v.count)} (${pct}%)` },
          h('span', { class: 'tag-bar', style: { width: `${pct}%` } }),
          h('span', { class: 'tag-val-name' }, String(v.value)),
          h('span', { class: 'tag-val-pct num' }, `${pct}%`));
      })));
  }));
}

export async function issueView(ctx) {
  const id = ctx.params.id;
  let eventId = ctx.params.eventId || null;
  let issue = null;
  let shownEventId = null;

  const headSlot = h('div', { class: 'issue-head' });
  const chartSlot = h('section', { class: 'card chart-card' });
  const tagsSlot = h('section', { class: 'card', 'aria-label': 'Tag values' });
  const eventSlot = h('div', { class: 'event-slot' });
  const eventsSlot = h('section', { class: 'card events-card', 'aria-label': 'Recent events' });
  let eventsList = [];
  let eventsCursor = null;

  function renderEvents() {
    const current = shownEventId;
    const more = eventsCursor ? h('button', { type: 'button', class: 'btn btn-small btn-quiet' }, 'Older events') : null;
    if (more) {
      more.addEventListener('click', async () => {
        more.disabled = true;
        try {
          const res = await api.issueEvents(id, { limit: 10, cursor: eventsCursor });
          eventsList = eventsList.concat(res.data || []);
          eventsCursor = res.next_cursor || null;
          renderEvents();
        } catch (e) {
          if (e.status !== 401) toast(`Could not load events: ${e.detail || e.message}`, 'toast-error');
          more.disabled = false;
        }
      });
    }
    keepFocus(eventsSlot, () => replace(eventsSlot,
      h('h2', { class: 'card-title' }, 'Recent events'),
      eventsList.length
        ? h('ol', { class: 'event-list' }, eventsList.map((e) => h('li', null,
          h('a', { href: `/issues/${id}/events/${e.event_id}`, 'aria-current': e.event_id === current ? 'true' : null, 'data-key': `event:${e.event_id}` },
            h('span', { class: 'event-list-when' }, timeAgo(e.timestamp)),
            h('span', { class: 'event-list-meta muted' }, [e.environment, e.release].filter(Boolean).join(' · ') || String(e.event_id).slice(0, 8))))))
        : h('p', { class: 'muted' }, 'No stored events.'),
      more));
  }

  async function loadEvents() {
    try {
      const res = await api.issueEvents(id, { limit: 10 });
      if (!ctx.alive()) return;
      eventsList = res.data || [];
      eventsCursor = res.next_cursor || null;
      renderEvents();
    } catch (e) {
      if (e.status === 401) throw e;
      replace(eventsSlot, h('h2', { class: 'card-title' }, 'Recent events'), errorBox(e));
    }
  }

  async function setStatus(status, btn) {
    btn.disabled = true;
    try {
      const updated = await api.setStatus(id, status);
      issue = { ...issue, ...(updated || { status }) };
      renderHead();
      toast(status === 'resolved' ? 'Resolved. A new event will reopen it as a regression.' : status === 'muted' ? 'Muted.' : 'Reopened.');
    } catch (e) {
      if (e.status !== 401) toast(`Could not change the status: ${e.detail || e.message}`, 'toast-error');
      btn.disabled = false;
    }
  }

  function actionButtons() {
    if (!can('project:write')) return [];
    const b = (label, status, cls) => {
      const btn = h('button', { type: 'button', class: ['btn', cls], 'data-action': status, 'data-key': `action:${label}` }, label);
      btn.addEventListener('click', () => setStatus(status, btn));
      return btn;
    };
    if (issue.status === 'resolved') return [b('Reopen', 'unresolved')];
    if (issue.status === 'muted') return [b('Unmute', 'unresolved'), b('Resolve', 'resolved', 'btn-primary')];
    return [b('Resolve', 'resolved', 'btn-primary'), b('Mute', 'muted')];
  }

  function renderHead() {
    const last24 = (issue.hourly || []).reduce((a, v) => a + (Number(v) || 0), 0);
    keepFocus(headSlot, () => replace(headSlot,
      h('nav', { class: 'crumbs-nav', 'aria-label': 'Breadcrumb' },
        h('a', { href: '/' }, 'Classes'), h('span', { 'aria-hidden': 'true' }, ' / '),
        h('a', { class: 'mono', href: href('/issues', { class: issue.class }) }, issue.class), h('span', { 'aria-hidden': 'true' }, ' / '),
        h('span', { 'aria-current': 'page' }, `#${issue.id}`)),
      h('div', { class: 'issue-head-row' },
        h('div', { class: 'issue-head-text' },
          h('h1', { class: 'issue-h1' }, issue.title || '(no title)'),
          h('div', { class: 'issue-meta' },
            kindBadge(issue.kind), levelBadge(issue.level),
            h('span', { class: 'status-now badge badge-quiet', 'data-status': issue.status }, issue.status),
            regressionBadge(issue.is_regression),
            issue.culprit ? h('span', { class: 'culprit mono', title: 'Top in-app frame' }, issue.culprit) : null)),
        h('div', { class: 'actions' }, actionButtons())),
      h('dl', { class: 'facts' },
        h('div', null, h('dt', null, 'Events'), h('dd', { class: 'num', title: int(issue.count) }, int(issue.count))),
        h('div', null, h('dt', null, 'Last 24 h'), h('dd', { class: 'num' }, compact(last24))),
        h('div', null, h('dt', null, 'First seen'), h('dd', null, timeAgo(issue.first_seen))),
        h('div', null, h('dt', null, 'Last seen'), h('dd', null, timeAgo(issue.last_seen))),
        h('div', { class: 'assignee-fact' }, h('dt', null, can('project:write') ? h('label', { for: 'assignee' }, 'Assigned to') : 'Assigned to'),
          h('dd', null, assigneeControl()))),
      releasesLine()));
  }

  // Release health: the releases this issue was seen in (most events first) and
  // the one it first appeared in.
  function releasesLine() {
    const list = issue.releases || [];
    if (!list.length) return null;
    return h('p', { class: 'issue-releases', 'aria-label': 'Releases' },
      h('span', { class: 'muted' }, 'Seen in releases: '),
      list.map((r) => h('span', { class: 'mono', 'data-release': r.version, title: `${int(r.count)} event${r.count === 1 ? '' : 's'}` },
        `${r.version} (${int(r.count)})`)),
      issue.first_release ? h('span', { class: 'muted' }, ` · first seen in ${issue.first_release}`) : null);
  }

  // ---- assignee and comments (the issue workflow) ----
  let members = null; // who can be assigned in the issue's project
  function who(u) {
    return u ? (u.display_name && u.display_name !== u.username ? `${u.display_name} (${u.username})` : u.username) : 'Nobody';
  }
  function assigneeControl() {
    const a = issue.assignee;
    if (!can('project:write') || !members) return h('span', { class: 'assignee-name' }, who(a));
    const me = state.me;
    const opts = members.filter((m) => m.assignable || (a && m.id === a.id));
    if (a && !opts.some((m) => m.id === a.id)) opts.push({ ...a, assignable: true });
    const sel = h('select', { id: 'assignee', name: 'assignee', 'data-key': 'assignee' },
      h('option', { value: '', selected: !a }, 'Nobody'),
      opts.map((m) => h('option', { value: String(m.id), selected: a && a.id === m.id },
        me && m.id === me.id ? `${who(m)} — me` : who(m))));
    sel.addEventListener('change', async () => {
      sel.disabled = true;
      try {
        const updated = await api.assign(id, sel.value ? Number(sel.value) : null);
        issue = { ...issue, assignee: updated.assignee };
        toast(updated.assignee ? `Assigned to ${who(updated.assignee)}.` : 'Unassigned.');
      } catch (e) {
        if (e.status !== 401) toast(`Could not assign: ${e.detail || e.message}`, 'toast-error');
      }
      renderHead();
    });
    return sel;
  }
  async function loadMembers() {
    if (!can('project:write')) return;
    try { members = await api.members(issue.project_id); } catch (e) { if (e.status === 401) throw e; members = null; }
  }

  const commentsSlot = h('section', { class: 'card comments-card', 'aria-labelledby': 'comments-h' });
  let comments = [];
  function renderComments() {
    const me = state.me || {};
    const list = comments.length
      ? h('ol', { class: 'comment-list' }, comments.map((c) => {
        const mayDelete = can('project:write') && (c.author.id === me.id || me.role === 'owner');
        const del = mayDelete ? h('button', { type: 'button', class: 'btn btn-small btn-quiet', 'aria-label': `Delete the comment of ${who(c.author)}` }, 'Delete') : null;
        if (del) {
          del.addEventListener('click', async () => {
            del.disabled = true;
            try { await api.deleteComment(id, c.id); comments = comments.filter((x) => x.id !== c.id); renderComments(); } catch (e) {
              if (e.status !== 401) toast(`Could not delete: ${e.detail || e.message}`, 'toast-error');
              del.disabled = false;
            }
          });
        }
        return h('li', { class: 'comment', 'data-comment-id': String(c.id) },
          h('div', { class: 'comment-head' }, h('strong', null, who(c.author)), ' ', timeAgo(c.created), del),
          markdown(c.body));
      }))
      : h('p', { class: 'muted' }, 'No comments yet.');
    let form = null;
    if (can('project:write')) {
      const text = h('textarea', { id: 'comment-body', name: 'body', rows: 3, maxlength: 10000, placeholder: 'Markdown: **bold**, *italic*, `code`, ``` blocks, [links](https://…)' });
      const msg = h('p', { class: 'form-error', role: 'alert' });
      const post = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Comment');
      form = h('form', { class: 'comment-form', novalidate: true },
        h('label', { for: 'comment-body' }, 'Add a comment'), text, msg, h('div', { class: 'actions' }, post));
      form.addEventListener('submit', async (e) => {
        e.preventDefault();
        msg.textContent = '';
        if (!text.value.trim()) { msg.textContent = 'Write something first.'; text.focus(); return; }
        post.disabled = true;
        try {
          comments = comments.concat([await api.addComment(id, text.value)]);
          renderComments();
          commentsSlot.querySelector('#comment-body')?.focus();
        } catch (err) {
          if (err.status !== 401) msg.textContent = err.detail || 'Could not post the comment.';
          post.disabled = false;
        }
      });
    }
    replace(commentsSlot, h('h2', { id: 'comments-h', class: 'card-title' }, `Comments${comments.length ? ` (${comments.length})` : ''}`), list, form);
  }
  async function loadComments() {
    try { comments = await api.comments(id); } catch (e) { if (e.status === 401) throw e; replace(commentsSlot, errorBox(e)); return; }
    if (ctx.alive()) renderComments();
  }

  let chartRange = '14d';
  function renderChart() {
    const all = issue.hourly_14d || [];
    const range = (key, label) => {
      const b = h('button', { type: 'button', class: 'seg-btn', 'aria-pressed': String(chartRange === key), 'data-key': `range:${key}` }, label);
      b.addEventListener('click', () => { chartRange = key; renderChart(); });
      return b;
    };
    keepFocus(chartSlot, () => replace(chartSlot,
      h('div', { class: 'chart-title-row' },
        h('h2', { class: 'card-title' }, chartRange === '24h' ? 'Events per hour, last 24 hours' : 'Events per hour, last 14 days'),
        h('div', { class: 'segmented segmented-small', role: 'group', 'aria-label': 'Chart range' }, range('14d', '14 days'), range('24h', '24 hours'))),
      hourlyBars(chartRange === '24h' ? all.slice(-24) : all)));
  }

  async function loadEvent(force = false) {
    const want = eventId || issue.latest_event_id;
    if (!want) {
      replace(eventSlot, h('section', { class: 'card' }, h('p', { class: 'muted' }, 'No stored event for this issue (older events are evicted by retention; counts stay exact).')));
      shownEventId = null;
      return;
    }
    if (!force && want === shownEventId) return;
    let ev;
    try {
      ev = await api.event(issue.project_id, want);
    } catch (e) {
      if (e.status === 401) throw e;
      if (ctx.alive()) replace(eventSlot, errorBox(e));
      return;
    }
    if (!ctx.alive()) return;
    shownEventId = want;
    const isLatest = !eventId || want === issue.latest_event_id;
    const nav = h('nav', { class: 'event-nav', 'aria-label': 'Events of this issue' },
      ev.previous_event_id
        ? h('a', { class: 'btn btn-small', href: `/issues/${id}/events/${ev.previous_event_id}`, rel: 'prev' }, '← Older')
        : h('span', { class: 'btn btn-small', 'aria-disabled': 'true' }, '← Older'),
      ev.next_event_id
        ? h('a', { class: 'btn btn-small', href: `/issues/${id}/events/${ev.next_event_id}`, rel: 'next' }, 'Newer →')
        : h('span', { class: 'btn btn-small', 'aria-disabled': 'true' }, 'Newer →'),
      isLatest ? null : h('a', { class: 'btn btn-small', href: `/issues/${id}` }, 'Latest'));
    const head = h('div', { class: 'event-head' },
      h('h2', { tabindex: '-1' }, isLatest ? 'Latest event' : 'Event', ' ', h('span', { class: 'mono muted event-id' }, String(ev.event_id || want).slice(0, 12))),
      ev.timestamp ? timeAgo(ev.timestamp) : null,
      nav);
    replace(eventSlot, renderEvent(ev, head));
  }

  async function loadIssue() {
    const statsP = api.stats(state.pid).catch(() => null);
    const next = await api.issue(id);
    if (!ctx.alive()) return false;
    issue = next;
    statsP.then((st) => { if (ctx.alive() && String(issue.project_id) === String(state.pid)) live.observe(st); });
    if (issue.project_id && String(issue.project_id) !== String(state.pid) && state.projects.some((p) => String(p.id) === String(issue.project_id))) {
      selectProject(String(issue.project_id));
      renderHeader();
    }
    return true;
  }

  try {
    if (!(await loadIssue())) return {};
  } catch (e) {
    if (e.status === 404) {
      replace(ctx.main, h('section', { class: 'empty' }, h('h1', null, `Issue #${id} does not exist`), h('p', null, h('a', { href: '/issues' }, 'Back to the issues'))));
      return {};
    }
    throw e;
  }
  await loadMembers();
  renderHead();
  renderChart();
  replace(tagsSlot, h('h2', { class: 'card-title' }, 'Top values'), tagSummary(issue.tags));
  await Promise.all([loadEvent(), loadEvents(), loadComments()]);
  if (!ctx.alive()) return {};
  renderEvents();
  replace(ctx.main, h('div', { class: 'page issue-page' },
    headSlot, chartSlot, commentsSlot,
    h('div', { class: 'issue-grid' }, eventSlot, h('div', { class: 'issue-aside' }, tagsSlot, eventsSlot))));

  return {
    async refresh() {
      if (!(await loadIssue())) return;
      renderHead();
      renderChart();
      replace(tagsSlot, h('h2', { class: 'card-title' }, 'Top values'), tagSummary(issue.tags));
      await loadEvents();
      renderEvents();
      // A newer event does not replace the one being read: offer it instead.
      if (shownEventId && issue.latest_event_id && issue.latest_event_id !== shownEventId && !eventSlot.querySelector('.newer-bar')) {
        const show = h('button', { type: 'button', class: 'btn btn-small btn-primary' }, 'Show it');
        show.addEventListener('click', async () => {
          if (eventId) {
            ctx.navigate(`/issues/${id}`); // update() loads the latest
          } else {
            await loadEvent(true);
            renderEvents();
            eventSlot.querySelector('h2')?.focus();
          }
        });
        eventSlot.prepend(h('div', { class: 'newer-bar', role: 'status' }, 'A newer event arrived.', show));
      } else if (!shownEventId) {
        await loadEvent();
      }
    },
    accepts: (next) => next.params.id === id,
    async update(next) {
      ctx = { ...ctx, alive: next.alive };
      eventId = next.params.eventId || null;
      await loadEvent();
      renderEvents();
      eventSlot.querySelector('h2')?.focus?.();
    },
  };
}
