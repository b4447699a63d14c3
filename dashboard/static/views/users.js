// Users (owners only): everyone with their role, projects and state; invite a
// new user (the link is shown once), change a role or the projects, disable,
// enable, make a new invite link.
import { h, replace } from '../dom.js';
import { api } from '../api.js';
import { state, toast, timeAgo, fromMs, errorBox, copyButton, can } from '../shell.js';

const ROLES = [['member', 'member: resolve, mute, assign, comment, alert rules'], ['viewer', 'viewer: read only'], ['owner', 'owner: everything, manages users']];

function projectBoxes(prefix, chosen) {
  return state.projects.map((p) => h('input', { type: 'checkbox', id: `${prefix}-${p.id}`, value: String(p.id), checked: chosen.includes(p.id) }));
}

function boxesField(legend, boxes) {
  return h('fieldset', { class: 'alert-row' }, h('legend', null, legend),
    boxes.length ? boxes.map((b) => h('label', { for: b.id, class: 'check' }, b, ' ',
      (state.projects.find((p) => String(p.id) === b.value) || {}).name)) : h('span', { class: 'muted' }, 'No projects.'));
}

function inviteNotice(slot, username, invite) {
  replace(slot, h('div', { class: 'notice', role: 'status' },
    h('p', null, h('strong', null, `Invite link for ${username}. `), 'Send it to them: it works once, until ', new Date(invite.expires).toISOString().slice(0, 10), '.'),
    h('div', { class: 'dsn' }, h('code', { class: 'dsn-value invite-url' }, invite.url), copyButton(() => invite.url, 'Copy link'))));
}

export async function usersView(ctx) {
  if (!can('org:admin')) {
    replace(ctx.main, h('section', { class: 'empty' }, h('h1', null, 'Users'), h('p', null, 'Only owners manage users.')));
    return {};
  }
  const listSlot = h('div');
  const notice = h('div');

  const username = h('input', { id: 'new-username', required: true, maxlength: 64, autocomplete: 'off', spellcheck: 'false' });
  const display = h('input', { id: 'new-display', maxlength: 128, autocomplete: 'off' });
  const email = h('input', { id: 'new-email', type: 'email', autocomplete: 'off' });
  const role = h('select', { id: 'new-role' }, ROLES.map(([v, t]) => h('option', { value: v }, t)));
  const boxes = projectBoxes('new-project', state.pid ? [Number(state.pid)] : []);
  const msg = h('p', { class: 'form-error', role: 'alert' });
  const create = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Create invite');
  const field = (id, label, input) => h('div', { class: 'alert-field' }, h('label', { for: id }, label), input);
  const form = h('form', { class: 'alert-form', novalidate: true },
    h('div', { class: 'alert-row' }, field('new-username', 'Username', username), field('new-display', 'Display name (optional)', display), field('new-email', 'Email (optional)', email)),
    field('new-role', 'Role', role),
    boxesField('Projects', boxes),
    msg, h('div', { class: 'actions' }, create));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    msg.textContent = '';
    if (!username.value.trim()) { msg.textContent = 'Enter a username.'; username.focus(); return; }
    create.disabled = true;
    try {
      const res = await api.createUser({
        username: username.value.trim(),
        display_name: display.value.trim() || undefined,
        email: email.value.trim() || undefined,
        role: role.value,
        projects: boxes.filter((b) => b.checked).map((b) => Number(b.value)),
      });
      inviteNotice(notice, res.user.username, res.invite);
      form.reset();
      await load();
    } catch (err) {
      msg.textContent = err.detail || 'Could not create the user.';
    } finally {
      create.disabled = false;
    }
  });

  async function change(u, changes, what) {
    try {
      await api.updateUser(u.id, changes);
      toast(`${u.username}: ${what}.`);
    } catch (err) {
      if (err.status !== 401) toast(err.detail || 'Could not change the user.', 'toast-error');
    }
    await load();
  }

  function row(u) {
    const roleSel = h('select', { 'aria-label': `Role of ${u.username}` }, ROLES.map(([v]) => h('option', { value: v, selected: v === u.role }, v)));
    roleSel.addEventListener('change', () => change(u, { role: roleSel.value }, `role ${roleSel.value}`));
    const pboxes = projectBoxes(`u${u.id}-project`, u.projects || []);
    const saveProjects = h('button', { type: 'button', class: 'btn btn-small' }, 'Save projects');
    saveProjects.addEventListener('click', () => change(u, { projects: pboxes.filter((b) => b.checked).map((b) => Number(b.value)) }, 'projects saved'));
    const projects = u.role === 'owner'
      ? h('span', { class: 'muted' }, 'all (owner)')
      : h('details', null, h('summary', null, (u.projects || []).map((id) => (state.projects.find((p) => p.id === id) || { name: `#${id}` }).name).join(', ') || 'none'),
        boxesField(`Projects of ${u.username}`, pboxes), saveProjects);
    const toggle = h('button', { type: 'button', class: 'btn btn-small' }, u.disabled ? 'Enable' : 'Disable');
    toggle.addEventListener('click', () => change(u, { disabled: !u.disabled }, u.disabled ? 'enabled' : 'disabled, sessions ended'));
    const invite = h('button', { type: 'button', class: 'btn btn-small btn-quiet' }, u.has_password ? 'New invite link' : 'Invite link');
    invite.addEventListener('click', async () => {
      try { inviteNotice(notice, u.username, await api.reinvite(u.id)); } catch (err) { toast(err.detail || 'Could not make an invite.', 'toast-error'); }
    });
    return h('tr', { 'data-username': u.username },
      h('td', null, h('strong', null, u.username), u.display_name !== u.username ? h('div', { class: 'muted small' }, u.display_name) : null, u.email ? h('div', { class: 'muted small' }, u.email) : null),
      h('td', null, roleSel),
      h('td', null, projects),
      h('td', null, u.disabled ? h('span', { class: 'badge status-muted' }, 'disabled') : u.has_password ? 'active' : h('span', { class: 'muted' }, 'invited')),
      h('td', null, timeAgo(fromMs(u.created))),
      h('td', { class: 'actions' }, toggle, u.disabled ? null : invite));
  }

  async function load() {
    let users;
    try { users = await api.users(); } catch (e) { if (e.status !== 401) replace(listSlot, errorBox(e)); return; }
    replace(listSlot, h('div', { class: 'table-wrap' }, h('table', { class: 'table users' },
      h('thead', null, h('tr', null, ['User', 'Role', 'Projects', 'State', 'Created', ''].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', null, users.map(row)))));
  }
  await load();
  if (!ctx.alive()) return {};
  replace(ctx.main, h('div', { class: 'page users-page' },
    h('div', { class: 'page-head' }, h('div', null, h('h1', null, 'Users'),
      h('p', { class: 'muted page-sub' }, 'Owners see every project; members and viewers see the projects they belong to.'))),
    notice,
    h('section', { class: 'card', 'aria-labelledby': 'users-h' }, h('h2', { id: 'users-h', class: 'card-title' }, 'Everyone'), listSlot),
    h('section', { class: 'card', 'aria-labelledby': 'invite-h' }, h('h2', { id: 'invite-h', class: 'card-title' }, 'Invite someone'), form)));
  return {};
}
