// Application state, the header (navigation, project switcher, live
// indicator, theme toggle) and the small UI pieces every page shares.
import { h, replace } from './dom.js';
import { api } from './api.js';
import { ago, absolute } from './format.js';

export const state = {
  user: null,
  me: null, // GET /api/0/user/: {id, username, display_name, role, scopes, projects}
  projects: [],
  pid: null,
};

/** Whether the signed-in user's role carries a scope (`project:write`, `org:admin`, ...). */
export function can(scope) {
  return Boolean(state.me && Array.isArray(state.me.scopes) && state.me.scopes.includes(scope));
}

/** An epoch-milliseconds time (the access routes' unit) as RFC 3339, for timeAgo. */
export function fromMs(ms) {
  return typeof ms === 'number' ? new Date(ms).toISOString() : null;
}

let navigateImpl = () => {};
export function setNavigate(fn) { navigateImpl = fn; }
/** Client-side navigation (History API). */
export function navigate(path, opts) { navigateImpl(path, opts); }

export function project() {
  return state.projects.find((p) => String(p.id) === String(state.pid)) || null;
}

export function selectProject(pid) {
  state.pid = pid;
  try { localStorage.setItem('errscope.project', String(pid)); } catch { /* ignore */ }
  live.reset();
  renderHeader();
}

export function storedProject() {
  try { return localStorage.getItem('errscope.project'); } catch { return null; }
}

/** Builds a path with query parameters, leaving out empty ones. */
export function href(path, params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '') u.set(k, v);
  }
  const q = u.toString();
  return q ? `${path}?${q}` : path;
}

// ---- shared pieces -------------------------------------------------------

export function kindBadge(kind) {
  const programmer = kind === 'programmer';
  return h('span', {
    class: ['badge', programmer ? 'kind-programmer' : 'kind-operational'],
    title: programmer
      ? 'Programmer error: a panic or an unhandled exception, a bug to fix in the code'
      : 'Operational error: a handled failure of the environment (network, disk, a peer)',
  }, programmer ? 'Programmer' : 'Operational');
}

export function levelBadge(level) {
  const l = String(level || 'error').toLowerCase();
  return h('span', { class: ['level', `level-${l.replace(/[^a-z]/g, '')}`] }, l);
}

export function statusBadge(status) {
  if (!status || status === 'unresolved') return null;
  return h('span', { class: ['badge', `status-${status}`] }, status === 'resolved' ? 'Resolved' : status === 'muted' ? 'Muted' : status);
}

export function regressionBadge(is) {
  return is ? h('span', { class: 'badge regression', title: 'This issue was resolved and happened again' }, 'Regression') : null;
}

/** A <time> that says "3 min ago" and keeps itself current. */
export function timeAgo(t) {
  const el = h('time', { 'data-rel': '', datetime: t || '', title: absolute(t) }, ago(t));
  return el;
}

setInterval(() => {
  for (const el of document.querySelectorAll('time[data-rel]')) {
    const t = el.getAttribute('datetime');
    const txt = ago(t);
    if (el.textContent !== txt) el.textContent = txt;
  }
}, 30_000);

export function copyButton(getText, label = 'Copy') {
  const btn = h('button', { type: 'button', class: 'btn btn-small' }, label);
  btn.addEventListener('click', async () => {
    const text = getText();
    let ok = false;
    try { await navigator.clipboard.writeText(text); ok = true; } catch { ok = false; }
    btn.textContent = ok ? 'Copied' : 'Select and copy';
    setTimeout(() => { btn.textContent = label; }, 1500);
  });
  return btn;
}

/** The three lines that link the agent to a project. */
export function snippet(dsn) {
  const lines = [
    ['# Cargo.toml, [dependencies]', 'errscope = "0.1"'],
    ['// first line of main()', `let _guard = errscope::init(errscope::Options::new().dsn("${dsn}"));`],
  ];
  const text = `errscope = "0.1"\nlet _guard = errscope::init(errscope::Options::new().dsn("${dsn}"));`;
  return h('div', { class: 'snippet' },
    h('div', { class: 'snippet-head' },
      h('span', null, 'Link the agent'),
      copyButton(() => text, 'Copy snippet')),
    h('pre', { class: 'code', tabindex: '0' },
      lines.map(([c, l], i) => [
        i ? '\n' : null,
        h('span', { class: 'code-comment' }, c), '\n',
        h('span', null, l),
      ])));
}

/** A curl command that sends one test event to the project of `dsn`. */
export function curlTest(dsn) {
  let cmd;
  try {
    const u = new URL(dsn);
    const pid = u.pathname.replace(/^\/+|\/+$/g, '');
    cmd = `curl -sS -X POST '${u.protocol}//${u.host}/api/${pid}/store/' \\\n`
      + `  -H 'X-Sentry-Auth: Sentry sentry_key=${decodeURIComponent(u.username)}, sentry_version=7' \\\n`
      + "  -H 'Content-Type: application/json' \\\n"
      + `  -d '{"message": "errscope test event", "level": "error", "platform": "native"}'`;
  } catch {
    return null;
  }
  return h('details', { class: 'curl' },
    h('summary', null, 'Or send a test event with curl'),
    h('div', { class: 'snippet' },
      h('div', { class: 'snippet-head' }, h('span', null, 'Shell'), copyButton(() => cmd, 'Copy command')),
      h('pre', { class: 'code', tabindex: '0' }, cmd)));
}

export function dsnField(dsn) {
  const code = h('code', { class: 'dsn-value' }, dsn);
  return h('div', { class: 'dsn' },
    h('span', { class: 'dsn-label' }, 'DSN'),
    code,
    copyButton(() => dsn, 'Copy DSN'));
}

export function emptyState(title, ...body) {
  return h('section', { class: 'empty' },
    h('h2', null, title),
    body);
}

export function noErrorsYet(p) {
  return emptyState('No errors yet — here is your DSN',
    h('p', { class: 'muted' }, 'Add the agent to a Rust service with this DSN; its first error shows up here within seconds, no reload needed.'),
    p ? dsnField(p.dsn) : null,
    p ? snippet(p.dsn) : null,
    p ? curlTest(p.dsn) : null);
}

export function errorBox(err) {
  const msg = err && err.detail ? err.detail : String(err && err.message ? err.message : err);
  return h('div', { class: 'error-box', role: 'alert' },
    h('strong', null, 'Could not load this page. '),
    msg);
}

export function loading() {
  return h('div', { class: 'loading', 'aria-busy': 'true' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), 'Loading…');
}

let toastTimer = null;
export function toast(message, kind = '') {
  let el = document.getElementById('toast');
  if (!el) {
    el = h('div', { id: 'toast', class: 'toast', role: 'status', 'aria-live': 'polite' });
    document.body.appendChild(el);
  }
  el.className = `toast show ${kind}`;
  el.textContent = message;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.className = 'toast'; }, 3000);
}

// ---- header -------------------------------------------------------------

const header = {
  el: null,
  nav: null,
  projectSlot: null,
  liveEl: null,
};

const THEMES = ['auto', 'light', 'dark'];
function currentTheme() {
  const t = document.documentElement.getAttribute('data-theme');
  return t === 'light' || t === 'dark' ? t : 'auto';
}
function themeButton() {
  const label = () => `Theme: ${currentTheme()}`;
  const btn = h('button', { type: 'button', class: 'icon-btn', 'aria-label': label(), title: label() },
    h('span', { 'aria-hidden': 'true' }, '◐'));
  btn.addEventListener('click', () => {
    const next = THEMES[(THEMES.indexOf(currentTheme()) + 1) % THEMES.length];
    if (next === 'auto') document.documentElement.removeAttribute('data-theme');
    else document.documentElement.setAttribute('data-theme', next);
    try {
      if (next === 'auto') localStorage.removeItem('errscope.theme');
      else localStorage.setItem('errscope.theme', next);
    } catch { /* ignore */ }
    btn.setAttribute('aria-label', label());
    btn.title = label();
  });
  return btn;
}

export function mountShell(root) {
  const main = h('main', { id: 'main', class: 'main', tabindex: '-1' });
  header.nav = h('nav', { class: 'nav', 'aria-label': 'Main' });
  header.projectSlot = h('div', { class: 'project-slot' });
  header.liveEl = h('span', { class: 'live', title: 'Polling the collector every 2 s' },
    h('span', { class: 'live-dot', 'aria-hidden': 'true' }), h('span', { class: 'live-text' }, 'Live'));
  header.userSlot = h('div', { class: 'user-slot' });
  header.el = h('header', { class: 'topbar' },
    h('a', { class: 'skip', href: '#main' }, 'Skip to content'),
    h('a', { class: 'brand', href: '/' }, h('img', { src: '/assets/favicon.svg', alt: '', width: 20, height: 20 }), h('span', null, 'errscope')),
    header.projectSlot,
    header.nav,
    h('div', { class: 'topbar-right' }, header.liveEl, themeButton(), header.userSlot));
  replace(root, header.el, main);
  header.el.querySelector('.skip').addEventListener('click', (e) => {
    e.preventDefault();
    main.focus();
  });
  return main;
}

export function setHeaderVisible(visible) {
  if (header.el) header.el.hidden = !visible;
}

export function renderHeader(active) {
  if (!header.el) return;
  if (active !== undefined) header.active = active;
  const a = header.active;
  const link = (path, text, key) => h('a', { href: path, 'aria-current': a === key ? 'page' : null }, text);
  replace(header.nav,
    link('/', 'Classes', 'classes'),
    link('/issues', 'Issues', 'issues'),
    link('/releases', 'Releases', 'releases'),
    link('/debug-files', 'Debug files', 'difs'),
    link('/alerts', 'Alerts', 'alerts'),
    link('/projects', 'Setup', 'projects'),
    can('org:admin') ? link('/users', 'Users', 'users') : null,
    can('org:admin') ? link('/audit', 'Audit log', 'audit') : null);
  if (state.projects.length > 1) {
    const sel = h('select', { class: 'project-select', 'aria-label': 'Project' },
      state.projects.map((p) => h('option', { value: String(p.id), selected: String(p.id) === String(state.pid) }, p.name)));
    sel.addEventListener('change', () => {
      selectProject(sel.value);
      navigate('/');
    });
    replace(header.projectSlot, sel);
  } else {
    const p = project();
    replace(header.projectSlot, p ? h('span', { class: 'project-name' }, p.name) : '');
  }
  if (state.user) {
    const out = h('button', { type: 'button', class: 'btn btn-quiet btn-small' }, 'Log out');
    out.addEventListener('click', async () => {
      try { await api.logout(); } catch { /* the session is gone either way */ }
      state.user = null;
      state.me = null;
      navigate('/login');
    });
    const me = state.me;
    const who = me
      ? h('a', { class: 'user', href: '/settings', title: 'Your account: password, API tokens, sessions', 'aria-current': a === 'settings' ? 'page' : null },
        me.display_name || me.username, ' ', h('span', { class: 'badge badge-quiet role-badge', 'data-role': me.role }, me.role))
      : h('span', { class: 'user muted' }, state.user);
    replace(header.userSlot, who, out);
  } else {
    header.userSlot.replaceChildren();
  }
}

// ---- live updates -------------------------------------------------------

/**
 * Polls the project's stats every 2 s; when `seq` changes the current view
 * refetches what it shows. The header dot says whether polling works.
 */
export const live = {
  seq: null,
  stats: null,
  onChange: null,
  timer: null,
  running: false,
  poke() {},
  reset() { this.seq = null; this.stats = null; },
  /** A view loaded its data together with these stats: changes after them count. */
  observe(st) {
    if (st && typeof st.seq === 'number') { this.seq = st.seq; this.stats = st; setLive('ok', st); }
  },
  start() {
    if (this.running) return;
    this.running = true;
    let busy = false;
    const tick = async () => {
      if (!this.running || busy) return;
      busy = true;
      clearTimeout(this.timer);
      try {
        if (state.user && state.pid && !document.hidden) {
          const st = await api.stats(state.pid);
          this.stats = st;
          const changed = this.seq !== null && st.seq !== this.seq;
          this.seq = st.seq;
          setLive('ok', st);
          if (changed && this.onChange) {
            setLive('updating', st);
            try { await this.onChange(st); } finally { setTimeout(() => setLive('ok', st), 1200); }
          }
        }
      } catch (e) {
        if (e && e.status !== 401) setLive('error');
      } finally {
        busy = false;
        this.timer = setTimeout(tick, 2000);
      }
    };
    // Back on the tab, or just signed in: look at once rather than at the next tick.
    document.addEventListener('visibilitychange', () => { if (!document.hidden) tick(); });
    this.poke = tick;
    tick();
  },
};

function setLive(kind, st) {
  const el = header.liveEl;
  if (!el) return;
  el.dataset.state = kind;
  const txt = el.querySelector('.live-text');
  const t = kind === 'error' ? 'Offline' : kind === 'updating' ? 'Updated' : 'Live';
  if (txt.textContent !== t) txt.textContent = t;
  el.title = kind === 'error'
    ? 'The collector did not answer; retrying every 2 s'
    : `Live: polling every 2 s${st && st.last_seen ? `; last event ${absolute(st.last_seen)}` : ''}`;
}

/** A same-origin path to go to after login (never another site). */
export function safeNext(path) {
  return typeof path === 'string' && path.startsWith('/') && !path.startsWith('//') && !path.startsWith('/\\')
    && !path.startsWith('/login') ? path : '/';
}
