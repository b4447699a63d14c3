// Sign-in page: POST /auth/login sets the HttpOnly session cookie.
import { h, replace } from '../dom.js';
import { api } from '../api.js';
import { state, safeNext } from '../shell.js';

export async function loginView(ctx) {
  // Already signed in? Go on.
  try {
    const s = await api.session();
    if (s && ctx.alive()) {
      state.user = s.username;
      ctx.navigate(safeNext(ctx.query.get('next')), { replace: true });
      return {};
    }
  } catch { /* not signed in */ }
  if (!ctx.alive()) return {};

  const user = h('input', { id: 'login-user', name: 'username', autocomplete: 'username', value: 'admin', required: true, spellcheck: 'false' });
  const pass = h('input', { id: 'login-pass', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const msg = h('p', { class: 'form-error', role: 'alert' });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary btn-block' }, 'Sign in');
  const form = h('form', { class: 'login-form', method: 'post', action: '/auth/login', novalidate: true },
    h('label', { for: 'login-user' }, 'Username'), user,
    h('label', { for: 'login-pass' }, 'Password'), pass,
    msg, submit);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    msg.textContent = '';
    if (!pass.value) { msg.textContent = 'Enter the password.'; pass.focus(); return; }
    submit.disabled = true;
    submit.textContent = 'Signing in…';
    try {
      await api.login(user.value.trim(), pass.value);
      state.user = null; // reloaded by the next page
      ctx.navigate(safeNext(ctx.query.get('next')), { replace: true });
    } catch (err) {
      msg.textContent = err.status === 401 ? 'Wrong username or password.' : (err.detail || 'Could not sign in.');
      pass.select();
      pass.focus();
    } finally {
      submit.disabled = false;
      submit.textContent = 'Sign in';
    }
  });
  replace(ctx.main, h('div', { class: 'login' },
    h('section', { class: 'login-card' },
      h('div', { class: 'login-brand' }, h('img', { src: '/assets/favicon.svg', alt: '', width: 28, height: 28 }), h('span', null, 'errscope')),
      h('h1', null, 'Sign in'),
      h('p', { class: 'muted' }, 'The password is the one the collector printed on its first start, or ERRSCOPE_ADMIN_PASSWORD.'),
      form)));
  pass.focus();
  return {};
}
