// Your account, for every user: change the password, your API tokens (created
// with scopes and shown once, listed with their last use, revoked) and your
// signed-in sessions (listed, ended).
import { h, replace } from '../dom.js';
import { api } from '../api.js';
import { state, toast, timeAgo, fromMs, errorBox, copyButton, navigate } from '../shell.js';
import { absolute } from '../format.js';

const SCOPE_TEXT = {
  'project:read': 'read projects, issues and events',
  'project:write': 'resolve, mute, assign, comment, alert rules',
  'project:admin': 'delete debug files',
  'debugfiles:write': 'upload debug files (sentry-cli)',
  'org:admin': 'projects, users, audit log',
};

function field(id, label, input) {
  return h('div', { class: 'alert-field' }, h('label', { for: id }, label), input);
}

function passwordCard() {
  const input = (id, ac) => h('input', { id, type: 'password', autocomplete: ac, required: true });
  const cur = input('pw-current', 'current-password');
  const next = input('pw-new', 'new-password');
  const again = input('pw-again', 'new-password');
  const msg = h('p', { class: 'form-error', role: 'alert' });
  const save = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Change password');
  const form = h('form', { class: 'alert-form', novalidate: true },
    field('pw-current', 'Current password', cur),
    field('pw-new', 'New password (at least 8 characters)', next),
    field('pw-again', 'The new password again', again),
    msg, h('div', { class: 'actions' }, save));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    msg.textContent = '';
    if ([...next.value].length < 8) { msg.textContent = 'The new password needs at least 8 characters.'; next.focus(); return; }
    if (next.value !== again.value) { msg.textContent = 'The two new passwords differ.'; again.focus(); return; }
    save.disabled = true;
    try {
      await api.changePassword(cur.value, next.value);
      form.reset();
      toast('Password changed.');
    } catch (err) {
      msg.textContent = err.detail || 'Could not change the password.';
    } finally {
      save.disabled = false;
    }
  });
  return h('section', { class: 'card', 'aria-labelledby': 'pw-h' }, h('h2', { id: 'pw-h', class: 'card-title' }, 'Password'), form);
}

function tokensCard() {
  const list = h('div', { class: 'tokens-list' });
  const shown = h('div', { class: 'token-shown', role: 'status' });
  const name = h('input', { id: 'token-name', maxlength: 128, placeholder: 'CI debug file uploads', autocomplete: 'off' });
  const mine = (state.me && state.me.scopes) || [];
  const boxes = mine.map((sc) => h('input', { type: 'checkbox', id: `scope-${sc}`, value: sc, checked: sc === 'project:read' }));
  const msg = h('p', { class: 'form-error', role: 'alert' });
  const create = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Create token');
  const form = h('form', { class: 'alert-form', novalidate: true },
    field('token-name', 'Name', name),
    h('fieldset', { class: 'alert-row scopes' }, h('legend', null, 'Scopes'),
      boxes.map((b) => h('label', { for: b.id, class: 'check' }, b, ' ', h('code', null, b.value), h('span', { class: 'muted small' }, ` ${SCOPE_TEXT[b.value] || ''}`)))),
    msg, h('div', { class: 'actions' }, create));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    msg.textContent = '';
    const scopes = boxes.filter((b) => b.checked).map((b) => b.value);
    if (!scopes.length) { msg.textContent = 'Choose at least one scope.'; return; }
    create.disabled = true;
    try {
      const t = await api.createToken(name.value.trim(), scopes);
      name.value = '';
      replace(shown, h('div', { class: 'notice' },
        h('p', null, h('strong', null, `Token “${t.name}” created. `), 'Copy it now: it is shown only this once.'),
        h('div', { class: 'dsn' }, h('code', { class: 'dsn-value token-secret' }, t.token), copyButton(() => t.token, 'Copy token'))));
      await load();
    } catch (err) {
      msg.textContent = err.detail || 'Could not create the token.';
    } finally {
      create.disabled = false;
    }
  });
  async function load() {
    let rows;
    try { rows = await api.tokens(); } catch (e) { if (e.status !== 401) replace(list, errorBox(e)); return; }
    if (!rows.length) { replace(list, h('p', { class: 'muted' }, 'No API tokens.')); return; }
    replace(list, h('div', { class: 'table-wrap' }, h('table', { class: 'table' },
      h('thead', null, h('tr', null, ['Name', 'Scopes', 'Token', 'Created', 'Last used', ''].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', null, rows.map((t) => {
        const revoke = h('button', { type: 'button', class: 'btn btn-small', 'aria-label': `Revoke token ${t.name}` }, 'Revoke');
        revoke.addEventListener('click', async () => {
          revoke.disabled = true;
          try { await api.revokeToken(t.id); toast(`Token “${t.name}” revoked.`); await load(); } catch (err) { toast(err.detail || 'Could not revoke.', 'toast-error'); revoke.disabled = false; }
        });
        return h('tr', { 'data-token-id': String(t.id) },
          h('td', null, t.name),
          h('td', null, t.scopes.map((sc) => h('code', { class: 'scope' }, sc))),
          h('td', { class: 'mono' }, `${t.prefix}…`),
          h('td', null, timeAgo(fromMs(t.created))),
          h('td', null, t.last_used ? timeAgo(fromMs(t.last_used)) : h('span', { class: 'muted' }, 'never')),
          h('td', null, revoke));
      })))));
  }
  load();
  return h('section', { class: 'card', 'aria-labelledby': 'tok-h' },
    h('h2', { id: 'tok-h', class: 'card-title' }, 'API tokens'),
    h('p', { class: 'muted small' }, 'For scripts and CI: send it as Authorization: Bearer <token>. A token never carries more than your role.'),
    shown, list, h('h3', null, 'New token'), form);
}

function sessionsCard() {
  const list = h('div');
  async function load() {
    let rows;
    try { rows = await api.sessions(); } catch (e) { if (e.status !== 401) replace(list, errorBox(e)); return; }
    replace(list, h('div', { class: 'table-wrap' }, h('table', { class: 'table' },
      h('thead', null, h('tr', null, ['Client', 'Signed in', 'Last active', 'Expires', ''].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', null, rows.map((s) => {
        const end = h('button', { type: 'button', class: 'btn btn-small' }, s.current ? 'Sign out here' : 'End session');
        end.addEventListener('click', async () => {
          end.disabled = true;
          try {
            await api.revokeSession(s.id);
            if (s.current) { state.user = null; state.me = null; navigate('/login'); return; }
            toast('Session ended.');
            await load();
          } catch (err) { if (err.status !== 401) toast(err.detail || 'Could not end it.', 'toast-error'); end.disabled = false; }
        });
        return h('tr', { 'data-session-id': String(s.id) },
          h('td', null, s.client || 'unknown', s.current ? [' ', h('span', { class: 'badge badge-quiet' }, 'this one')] : null),
          h('td', null, timeAgo(fromMs(s.created))),
          h('td', null, timeAgo(fromMs(s.last_seen))),
          h('td', null, h('time', { datetime: fromMs(s.expires) }, absolute(fromMs(s.expires)))),
          h('td', null, end));
      })))));
  }
  load();
  return h('section', { class: 'card', 'aria-labelledby': 'ses-h' }, h('h2', { id: 'ses-h', class: 'card-title' }, 'Sessions'), list);
}

export async function settingsView(ctx) {
  const me = state.me || {};
  const projects = me.projects === null ? 'every project'
    : (state.projects.map((p) => p.name).join(', ') || 'no project yet');
  replace(ctx.main, h('div', { class: 'page settings-page' },
    h('div', { class: 'page-head' }, h('div', null,
      h('h1', null, 'Your account'),
      h('p', { class: 'muted page-sub' }, `${me.display_name || me.username} (${me.username}), ${me.role}: ${projects}`))),
    passwordCard(), tokensCard(), sessionsCard()));
  return {};
}
