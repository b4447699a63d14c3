// Accepting an invite (/invite/<token>, the link an owner hands out): whom it is
// for, a password typed twice, then POST /auth/invite/ sets it and signs in.
import { h, replace } from '../dom.js';
import { api } from '../api.js';
import { state } from '../shell.js';

function card(...body) {
  return h('div', { class: 'login' },
    h('section', { class: 'login-card' },
      h('div', { class: 'login-brand' }, h('img', { src: '/assets/favicon.svg', alt: '', width: 28, height: 28 }), h('span', null, 'errscope')),
      body));
}

export async function inviteView(ctx) {
  const token = ctx.params.token;
  let info;
  try {
    info = await api.inviteInfo(token);
  } catch (e) {
    if (!ctx.alive()) return {};
    replace(ctx.main, card(
      h('h1', null, 'This invite does not work'),
      h('p', { class: 'muted' }, e.status === 404
        ? 'The link is unknown, was used already or has expired (invites last 7 days). Ask an owner for a new one.'
        : (e.detail || 'The collector could not be reached.')),
      h('p', null, h('a', { href: '/login' }, 'Sign in'))));
    return {};
  }
  if (!ctx.alive()) return {};
  const pass = h('input', { id: 'invite-pass', name: 'password', type: 'password', autocomplete: 'new-password', required: true, minlength: 8 });
  const again = h('input', { id: 'invite-pass2', name: 'password2', type: 'password', autocomplete: 'new-password', required: true, minlength: 8 });
  const msg = h('p', { class: 'form-error', role: 'alert' });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary btn-block' }, 'Set password and sign in');
  const form = h('form', { class: 'login-form', novalidate: true },
    h('input', { type: 'text', name: 'username', autocomplete: 'username', value: info.username, hidden: true, readonly: true }),
    h('label', { for: 'invite-pass' }, 'New password (at least 8 characters)'), pass,
    h('label', { for: 'invite-pass2' }, 'The same password again'), again,
    msg, submit);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    msg.textContent = '';
    if ([...pass.value].length < 8) { msg.textContent = 'The password needs at least 8 characters.'; pass.focus(); return; }
    if (pass.value !== again.value) { msg.textContent = 'The two passwords differ.'; again.select(); again.focus(); return; }
    submit.disabled = true;
    try {
      await api.acceptInvite(token, pass.value);
      state.user = null; // the next page loads who we are
      state.me = null;
      ctx.navigate('/', { replace: true });
    } catch (err) {
      msg.textContent = err.status === 404 ? 'This invite was used or has expired meanwhile.' : (err.detail || 'Could not set the password.');
      submit.disabled = false;
    }
  });
  replace(ctx.main, card(
    h('h1', null, 'Welcome to errscope'),
    h('p', { class: 'invite-who' }, 'You are invited as ', h('strong', { class: 'invite-username' }, info.username),
      info.display_name && info.display_name !== info.username ? ` (${info.display_name})` : null,
      ', with the role ', h('strong', { class: 'invite-role' }, info.role), '.'),
    h('p', { class: 'muted' }, 'Choose a password to sign in with.'),
    form));
  pass.focus();
  return {};
}
