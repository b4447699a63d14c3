// errscope dashboard: boot, client-side routing (History API) and the live loop.
import { h, replace } from './dom.js';
import { api, setUnauthorizedHandler } from './api.js';
import {
  state, live, mountShell, renderHeader, setHeaderVisible, setNavigate,
  storedProject, errorBox, loading,
} from './shell.js';
// Each page's module is fetched when first needed (in parallel with the session
// check), then the others while the browser is idle, so later clicks are instant.
function lazy(load, name) {
  let p = null;
  return () => (p ??= load().then((m) => m[name]));
}
const views = {
  classes: lazy(() => import('./views/classes.js'), 'classesView'),
  issues: lazy(() => import('./views/issues.js'), 'issuesView'),
  issue: lazy(() => import('./views/issue.js'), 'issueView'),
  login: lazy(() => import('./views/login.js'), 'loginView'),
  projects: lazy(() => import('./views/projects.js'), 'projectsView'),
  difs: lazy(() => import('./views/difs.js'), 'difsView'),
  alerts: lazy(() => import('./views/alerts.js'), 'alertsView'),
  releases: lazy(() => import('./views/releases.js'), 'releasesView'),
  invite: lazy(() => import('./views/invite.js'), 'inviteView'),
  settings: lazy(() => import('./views/settings.js'), 'settingsView'),
  users: lazy(() => import('./views/users.js'), 'usersView'),
  audit: lazy(() => import('./views/audit.js'), 'auditView'),
};

const routes = [
  { re: /^\/login\/?$/, load: views.login, bare: true },
  { re: /^\/invite\/([0-9a-fA-F]+)\/?$/, load: views.invite, bare: true, keys: ['token'] },
  { re: /^\/settings\/?$/, load: views.settings, nav: 'settings' },
  { re: /^\/users\/?$/, load: views.users, nav: 'users' },
  { re: /^\/audit\/?$/, load: views.audit, nav: 'audit' },
  { re: /^\/$/, load: views.classes, nav: 'classes' },
  { re: /^\/issues\/?$/, load: views.issues, nav: 'issues' },
  { re: /^\/issues\/(\d+)\/?$/, load: views.issue, nav: 'issues', keys: ['id'] },
  { re: /^\/issues\/(\d+)\/events\/([0-9a-fA-F-]{32,36})\/?$/, load: views.issue, nav: 'issues', keys: ['id', 'eventId'] },
  { re: /^\/classes\/(.+?)\/?$/, redirect: (m) => `/issues?class=${m[1]}` },
  { re: /^\/projects\/?$/, load: views.projects, nav: 'projects' },
  { re: /^\/debug-files\/?$/, load: views.difs, nav: 'difs' },
  { re: /^\/alerts\/?$/, load: views.alerts, nav: 'alerts' },
  { re: /^\/releases\/?$/, load: views.releases, nav: 'releases' },
];

function notFound(ctx) {
  replace(ctx.main, h('section', { class: 'empty' },
    h('h1', null, 'Page not found'),
    h('p', null, h('a', { href: '/' }, 'Back to the error classes'))));
  return {};
}

const app = document.getElementById('app');
const main = mountShell(app);
let current = null; // { route, view handle }
let generation = 0;
let booted = false;
let prefetched = false;

function navigate(path, { replace = false } = {}) {
  if (replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  route({ focus: !replace });
}
setNavigate(navigate);

setUnauthorizedHandler(() => {
  state.user = null;
  state.me = null;
  if (location.pathname !== '/login') {
    navigate(`/login?next=${encodeURIComponent(location.pathname + location.search)}`, { replace: true });
  }
});

async function ensureSession() {
  if (state.user) return true;
  try {
    const [me, projects] = await Promise.all([api.me(), api.projects()]);
    state.me = me;
    state.user = me && me.username ? me.username : 'admin';
    state.projects = projects || [];
    const stored = storedProject();
    state.pid = state.projects.some((p) => String(p.id) === stored) ? stored
      : (state.projects[0] ? String(state.projects[0].id) : null);
    return true;
  } catch (e) {
    if (e.status === 401) return false; // the unauthorized handler redirects
    replace(main, errorBox(e));
    return false;
  }
}

async function route({ focus = false } = {}) {
  const gen = ++generation;
  const url = new URL(location.href);
  let params = {};
  let r = null;
  for (const cand of routes) {
    const m = url.pathname.match(cand.re);
    if (!m) continue;
    if (cand.redirect) {
      navigate(cand.redirect(m), { replace: true });
      return;
    }
    r = cand;
    try {
      (cand.keys || []).forEach((k, i) => { params[k] = decodeURIComponent(m[i + 1]); });
    } catch {
      r = null; // malformed percent-encoding: not a page of ours
    }
    break;
  }
  const viewP = r ? r.load() : Promise.resolve(notFound);
  const ctx = {
    main,
    params,
    query: url.searchParams,
    url,
    alive: () => gen === generation,
    navigate,
  };

  if (!r || !r.bare) {
    setHeaderVisible(true);
    if (!(await ensureSession())) return;
    if (gen !== generation) return;
    renderHeader(r ? r.nav : '');
  } else {
    setHeaderVisible(false);
  }

  let view;
  try {
    view = await viewP;
  } catch (e) {
    replace(main, errorBox(new Error('The dashboard could not load this page\'s code; reload to try again.')));
    return;
  }
  if (gen !== generation) return;

  // Same view, new parameters (filters, another event of the issue): let the
  // view update in place so focus and open toggles survive.
  if (current && current.view === view && current.handle && current.handle.update
      && current.handle.accepts && current.handle.accepts(ctx)) {
    current.ctx = ctx;
    await current.handle.update(ctx);
    return;
  }

  if (current && current.handle && current.handle.destroy) current.handle.destroy();
  current = { view, handle: null, ctx };
  if (booted) replace(main, loading());
  booted = true;
  let handle = null;
  try {
    handle = await view(ctx);
  } catch (e) {
    if (gen === generation && e.status !== 401) replace(main, errorBox(e));
    return;
  }
  if (gen !== generation) return;
  current.handle = handle || {};
  const heading = main.querySelector('h1');
  document.title = heading ? `${heading.textContent} · errscope` : 'errscope';
  if (live.seq === null) live.poke(); // a page that did not bring stats along
  if (!prefetched) {
    prefetched = true;
    const idle = window.requestIdleCallback || ((fn) => setTimeout(fn, 200));
    idle(() => Object.values(views).forEach((load) => load().catch(() => {})));
  }
  if (focus) {
    window.scrollTo(0, 0);
    (heading || main).setAttribute('tabindex', '-1');
    (heading || main).focus({ preventScroll: true });
  }
}

live.onChange = async () => {
  if (current && current.handle && current.handle.refresh && current.ctx.alive()) {
    await current.handle.refresh();
  }
};

// Same-origin links navigate without a reload.
document.addEventListener('click', (e) => {
  if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  const a = e.target.closest('a[href]');
  if (!a || a.target || a.hasAttribute('download')) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin) return;
  if (url.pathname.startsWith('/api/') || url.pathname.startsWith('/assets/') || url.pathname.startsWith('/auth/')) return;
  if (url.hash && url.pathname === location.pathname && url.search === location.search) return;
  e.preventDefault();
  navigate(url.pathname + url.search);
});

// Keys, as in most developer tools: "/" focuses the search box, "j"/"k" move
// through the rows of a list (Enter then opens the focused one).
document.addEventListener('keydown', (e) => {
  if (e.metaKey || e.ctrlKey || e.altKey) return;
  const t = e.target;
  if (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) return;
  if (e.key === '/') {
    const search = document.querySelector('input[type=search]');
    if (search) {
      e.preventDefault();
      search.focus();
      search.select();
    }
  } else if (e.key === 'j' || e.key === 'k') {
    const rows = [...document.querySelectorAll('main a.issue-title, main a.class-name')];
    if (!rows.length) return;
    const i = rows.indexOf(document.activeElement);
    const next = e.key === 'j' ? (i < 0 ? 0 : Math.min(rows.length - 1, i + 1)) : (i < 0 ? 0 : Math.max(0, i - 1));
    e.preventDefault();
    rows[next].focus();
    rows[next].scrollIntoView({ block: 'nearest' });
  }
});

window.addEventListener('popstate', () => route());
route();
live.start();
