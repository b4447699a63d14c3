// The audit log (owners only): who did what, newest first, 100 at a time.
import { h, replace } from '../dom.js';
import { api } from '../api.js';
import { timeAgo, fromMs, errorBox, can } from '../shell.js';

export async function auditView(ctx) {
  if (!can('org:admin')) {
    replace(ctx.main, h('section', { class: 'empty' }, h('h1', null, 'Audit log'), h('p', null, 'Only owners read the audit log.')));
    return {};
  }
  const body = h('tbody');
  const more = h('button', { type: 'button', class: 'btn' }, 'Older entries');
  let cursor = null;
  async function load() {
    let res;
    try { res = await api.audit(cursor); } catch (e) { if (e.status !== 401) body.appendChild(h('tr', null, h('td', { colspan: 6 }, errorBox(e)))); return; }
    for (const e of res.data || []) {
      body.appendChild(h('tr', { 'data-action': e.action },
        h('td', null, timeAgo(fromMs(e.at))),
        h('td', null, e.actor || h('span', { class: 'muted' }, 'anonymous')),
        h('td', null, h('code', null, e.action)),
        h('td', { class: 'mono' }, e.target),
        h('td', null, e.detail),
        h('td', { class: 'mono muted' }, e.address)));
    }
    cursor = res.next_cursor || null;
    more.hidden = !cursor;
  }
  more.addEventListener('click', async () => { more.disabled = true; await load(); more.disabled = false; });
  await load();
  if (!ctx.alive()) return {};
  replace(ctx.main, h('div', { class: 'page audit-page' },
    h('div', { class: 'page-head' }, h('div', null, h('h1', null, 'Audit log'),
      h('p', { class: 'muted page-sub' }, 'Logins, user, token and session changes, issue status, assignments and comments, rules, debug file deletes.'))),
    h('div', { class: 'table-wrap' }, h('table', { class: 'table audit' },
      h('thead', null, h('tr', null, ['When', 'Who', 'Action', 'Target', 'Detail', 'Address'].map((t) => h('th', { scope: 'col' }, t)))),
      body)),
    h('div', { class: 'pager' }, more)));
  return {
    async refresh() {},
  };
}
