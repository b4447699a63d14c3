// One event, rendered as text: exception chain, backtrace, tags, domain,
// contexts, breadcrumbs and the raw JSON. Every string here comes from the
// event and is attacker-controlled: it only ever reaches the DOM as a Text node.
import { h } from '../dom.js';
import { absolute, clock } from '../format.js';
import { levelBadge, timeAgo } from '../shell.js';

const str = (v) => (v === null || v === undefined ? '' : typeof v === 'string' ? v : JSON.stringify(v));

function section(title, ...body) {
  return h('section', { class: 'card ev-section' }, h('h3', { class: 'card-title' }, title), body);
}

function kvTable(entries, cls = '') {
  const rows = entries.filter(([, v]) => v !== undefined && v !== null && v !== '');
  if (!rows.length) return null;
  return h('table', { class: ['kv', cls] }, h('tbody', null, rows.map(([k, v]) =>
    h('tr', null, h('th', { scope: 'row' }, k), h('td', null, typeof v === 'object' && v instanceof Node ? v : str(v))))));
}

/** Sentry sends tags as an object or as [[key, value], ...]. */
export function tagPairs(tags) {
  if (!tags) return [];
  if (Array.isArray(tags)) return tags.filter((t) => Array.isArray(t) && t.length >= 2).map(([k, v]) => [str(k), str(v)]);
  if (typeof tags === 'object') return Object.entries(tags).map(([k, v]) => [k, str(v)]);
  return [];
}

function exceptionValues(ev) {
  const ex = ev.exception;
  if (!ex) return [];
  const vals = Array.isArray(ex) ? ex : Array.isArray(ex.values) ? ex.values : [];
  return vals.filter((v) => v && typeof v === 'object');
}

function messageOf(ev) {
  if (typeof ev.message === 'string') return ev.message;
  if (ev.message && typeof ev.message === 'object') return str(ev.message.formatted || ev.message.message);
  if (ev.logentry) return str(ev.logentry.formatted || ev.logentry.message);
  return '';
}

/** At most this many lines before and after a frame's line are shown. */
const CONTEXT_MAX = 20;

/**
 * The source around a frame's line, the line itself marked: `pre_context`,
 * `context_line`, `post_context` as the Python and Node SDKs send them (and source
 * bundles fill them for Rust frames). Each line is a Text node, never markup.
 */
function sourceContext(f) {
  if (typeof f.context_line !== 'string') return null;
  const lines = (v) => (Array.isArray(v) ? v.map(str) : []);
  const pre = lines(f.pre_context).slice(-CONTEXT_MAX);
  const post = lines(f.post_context).slice(0, CONTEXT_MAX);
  const lineno = Number.isInteger(f.lineno) && f.lineno > pre.length ? f.lineno : null;
  const row = (text, i, current) => h('li', {
    class: ['src-line', current ? 'src-current' : null],
    'aria-current': current ? 'true' : null,
  },
  h('span', { class: 'src-no' }, lineno === null ? '' : String(lineno - pre.length + i)),
  h('code', { class: 'src-code' }, text));
  return h('ol', { class: 'src', tabindex: '0', 'aria-label': lineno === null ? 'Source' : `Source around line ${lineno}` },
    pre.map((t, i) => row(t, i, false)),
    row(f.context_line, pre.length, true),
    post.map((t, i) => row(t, pre.length + 1 + i, false)));
}

function frameRow(f, openSource = false) {
  const loc = [];
  const file = f.filename || f.abs_path;
  if (file) loc.push(str(file));
  const line = f.lineno ? `:${f.lineno}${f.colno ? `:${f.colno}` : ''}` : '';
  const sub = [];
  if (f.module && f.module !== f.function) sub.push(h('span', { class: 'frame-module' }, str(f.module)));
  if (f.abs_path && f.abs_path !== f.filename) sub.push(h('span', { class: 'frame-path', title: str(f.abs_path) }, str(f.abs_path)));
  if (f.instruction_addr) sub.push(h('span', { class: 'frame-addr' }, str(f.instruction_addr)));
  const src = sourceContext(f);
  return h('li', { class: ['frame', f.in_app ? 'in-app' : 'lib'] },
    h('div', { class: 'frame-main' },
      h('span', { class: 'frame-fn' }, str(f.function) || '<unknown>'),
      loc.length ? h('span', { class: 'frame-loc' }, ' ', h('span', { class: 'frame-at' }, 'at '), loc[0], line) : null,
      f.in_app ? h('span', { class: 'frame-tag' }, 'in app') : null),
    sub.length ? h('div', { class: 'frame-sub' }, sub) : null,
    src ? h('details', { class: 'frame-src', open: openSource }, h('summary', null, 'Source'), src) : null);
}

/** Frames newest first; runs of library frames fold behind a toggle when in-app frames exist. */
function stacktrace(frames) {
  const list = frames.slice().reverse();
  const hasInApp = list.some((f) => f.in_app);
  // The source of the most recent in-app frame (or frame, without in-app ones) is open.
  const withSource = list.find((f) => (f.in_app || !hasInApp) && typeof f.context_line === 'string');
  const row = (f) => frameRow(f, f === withSource);
  const ol = h('ol', { class: 'frames' });
  let run = [];
  const flush = () => {
    if (!run.length) return;
    if (!hasInApp) {
      run.forEach((f) => ol.appendChild(row(f)));
    } else {
      const inner = h('ol', { class: 'frames-folded', hidden: true }, run.map(row));
      const n = run.length;
      const label = () => (inner.hidden ? `Show ${n} library frame${n === 1 ? '' : 's'}` : `Hide ${n} library frame${n === 1 ? '' : 's'}`);
      const btn = h('button', { type: 'button', class: 'frames-toggle', 'aria-expanded': 'false' }, label());
      btn.addEventListener('click', () => {
        inner.hidden = !inner.hidden;
        btn.setAttribute('aria-expanded', String(!inner.hidden));
        btn.textContent = label();
      });
      ol.appendChild(h('li', { class: 'frame-group' }, btn, inner));
    }
    run = [];
  };
  for (const f of list) {
    if (f.in_app) { flush(); ol.appendChild(row(f)); } else run.push(f);
  }
  flush();
  const inApp = list.filter((f) => f.in_app).length;
  const allBtn = hasInApp && inApp < list.length
    ? h('button', { type: 'button', class: 'btn btn-small btn-quiet' }, 'Expand all')
    : null;
  if (allBtn) {
    allBtn.addEventListener('click', () => {
      const toggles = [...ol.querySelectorAll('.frames-toggle')];
      const open = toggles.some((b) => b.getAttribute('aria-expanded') === 'false');
      for (const b of toggles) if ((b.getAttribute('aria-expanded') === 'false') === open) b.click();
      allBtn.textContent = open ? 'Collapse library frames' : 'Expand all';
    });
  }
  return h('div', { class: 'stack' },
    h('div', { class: 'stack-head' },
      h('span', { class: 'muted' }, `${list.length} frame${list.length === 1 ? '' : 's'}, ${inApp} in app · most recent call first`),
      allBtn),
    ol);
}

function exceptionChain(values) {
  // Sentry lists the innermost exception last; show the outermost first.
  const chain = values.slice().reverse();
  return h('div', { class: 'chain' }, chain.map((ex, i) => {
    const mech = ex.mechanism && typeof ex.mechanism === 'object' ? ex.mechanism : null;
    const frames = ex.stacktrace && Array.isArray(ex.stacktrace.frames) ? ex.stacktrace.frames.filter((f) => f && typeof f === 'object') : [];
    return h('div', { class: 'exc' },
      i > 0 ? h('div', { class: 'exc-cause' }, 'caused by') : null,
      h('div', { class: 'exc-head' },
        h('span', { class: 'exc-type mono' }, str(ex.type) || 'Error'),
        mech && mech.handled === false ? h('span', { class: 'badge kind-programmer' }, 'unhandled') : null,
        mech && mech.type ? h('span', { class: 'badge badge-quiet mono', title: 'mechanism' }, str(mech.type)) : null,
        mech && mech.meta && mech.meta.errno && mech.meta.errno.name
          ? h('span', { class: 'badge badge-quiet mono', title: 'errno' }, `${str(mech.meta.errno.name)} ${str(mech.meta.errno.number)}`) : null),
      ex.value ? h('p', { class: 'exc-value' }, str(ex.value)) : null,
      mech && mech.data && typeof mech.data === 'object' && Object.keys(mech.data).length
        ? kvTable(Object.entries(mech.data), 'kv-small') : null,
      frames.length ? stacktrace(frames) : null);
  }));
}

function breadcrumbs(ev) {
  const b = ev.breadcrumbs;
  const list = Array.isArray(b) ? b : b && Array.isArray(b.values) ? b.values : [];
  if (!list.length) return null;
  return section(`Breadcrumbs (${list.length})`, h('div', { class: 'table-wrap' }, h('table', { class: 'table crumbs' },
    h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Time (UTC)'), h('th', { scope: 'col' }, 'Level'), h('th', { scope: 'col' }, 'Category'), h('th', { scope: 'col' }, 'Message'))),
    h('tbody', null, list.filter((c) => c && typeof c === 'object').map((c) => h('tr', null,
      h('td', { class: 'mono num nowrap', title: absolute(c.timestamp) }, clock(c.timestamp)),
      h('td', null, levelBadge(c.level || 'info')),
      h('td', { class: 'mono' }, str(c.category || c.type)),
      h('td', { class: 'crumb-msg' }, str(c.message) || (c.data ? JSON.stringify(c.data) : ''))))))));
}

function domainSection(ev) {
  const d = ev.contexts && ev.contexts.domain;
  if (!d || typeof d !== 'object') return null;
  const tags = tagPairs(d.tags);
  const data = d.data && typeof d.data === 'object' ? Object.entries(d.data) : [];
  return section('Domain',
    h('p', { class: 'domain-name' }, h('span', { class: 'muted' }, 'name '), h('span', { class: 'mono' }, str(d.name) || '—')),
    tags.length ? h('ul', { class: 'tags' }, tags.map(([k, v]) => h('li', { class: 'tag' }, h('span', { class: 'tag-k' }, k), h('span', { class: 'tag-v' }, v)))) : null,
    data.length ? kvTable(data) : null);
}

function contextsSection(ev) {
  const ctxs = ev.contexts && typeof ev.contexts === 'object' ? Object.entries(ev.contexts).filter(([k, v]) => k !== 'domain' && v && typeof v === 'object') : [];
  if (!ctxs.length) return null;
  return section('Contexts', h('div', { class: 'ctx-grid' }, ctxs.map(([name, c]) => h('div', { class: 'ctx' },
    h('h4', null, name),
    kvTable(Object.entries(c).filter(([k]) => k !== 'type'), 'kv-small')))));
}

/** A thread's stack when the event has no exception stack (e.g. a message with attach_stacktrace). */
function threadStack(ev) {
  const th = ev.threads && Array.isArray(ev.threads.values) ? ev.threads.values : [];
  const t = th.find((x) => x && x.crashed && x.stacktrace) || th.find((x) => x && x.current && x.stacktrace) || th.find((x) => x && x.stacktrace);
  const frames = t && Array.isArray(t.stacktrace.frames) ? t.stacktrace.frames.filter((f) => f && typeof f === 'object') : [];
  if (!frames.length) return null;
  return section(`Stack trace${t.name ? ` of thread ${str(t.name)}` : ''}`, stacktrace(frames));
}

/**
 * Images whose frames could not be symbolicated for want of a debug file
 * (`errscope.missing_debug_files`), each with the commands that upload it.
 */
function missingDebugFiles(ev) {
  const notes = ev.errscope && typeof ev.errscope === 'object' ? ev.errscope : null;
  const list = notes && Array.isArray(notes.missing_debug_files)
    ? notes.missing_debug_files.filter((m) => m && typeof m === 'object') : [];
  if (!list.length) return null;
  const origin = typeof location !== 'undefined' ? location.origin : 'http://127.0.0.1:8000';
  const project = str(ev.project) || '<project>';
  return section('Missing debug files',
    h('p', { class: 'muted' },
      'Frames of these images have addresses only. Upload the debug file of the same build ',
      '(the unstripped binary, or its ', h('span', { class: 'mono' }, 'objcopy --only-keep-debug'),
      ' companion; for Windows and macOS programs the Breakpad ', h('span', { class: 'mono' }, '.sym'),
      ' file dump_syms makes) and this event is symbolicated; new events group by the symbolicated frames.'),
    list.map((m) => {
      const file = str(m.code_file) || '<file>';
      const base = file.split(/[\\/]/).pop() || file;
      const windows = /\.(exe|dll)$/i.test(base) || file.includes('\\');
      const debug = windows ? `${base.replace(/\.(exe|dll)$/i, '')}.sym` : `${base}.debug`;
      return h('div', { class: 'missing-dif' },
        kvTable([
          ['image', h('span', { class: 'mono' }, file)],
          ['debug id', h('span', { class: 'mono' }, str(m.debug_id))],
          ['code id', m.code_id ? h('span', { class: 'mono' }, str(m.code_id)) : null],
        ], 'kv-small'),
        h('pre', { class: 'code upload-cmd' },
          `sentry-cli --url ${origin} --auth-token <API token> debug-files upload --org any --project ${project} ${debug}\n`
          + `errscope-collector debug-files upload --data <data dir> --project ${project} ${debug}`));
    }));
}

/**
 * The minidump an event was made from (`errscope.minidump`): its size, whether it could
 * be processed (and why not), and a link that downloads the raw dump.
 */
function minidumpSection(ev) {
  const notes = ev.errscope && typeof ev.errscope === 'object' ? ev.errscope : null;
  const m = notes && notes.minidump && typeof notes.minidump === 'object' ? notes.minidump : null;
  if (!m) return null;
  const pid = encodeURIComponent(str(ev.project));
  const eid = encodeURIComponent(str(ev.event_id));
  const href = `/api/0/projects/${pid}/events/${eid}/attachments/minidump/`;
  return section('Minidump',
    kvTable([
      ['file', h('span', { class: 'mono' }, str(m.name))],
      ['size', Number.isFinite(m.size) ? `${m.size} bytes` : null],
      ['processed', m.processed === false ? 'no' : 'yes'],
      ['reason', m.error ? str(m.error) : null],
    ], 'kv-small'),
    h('p', null, h('a', { class: 'btn btn-small minidump-download', href, download: str(m.name) || 'minidump.dmp' }, 'Download minidump')));
}

/** Everything about one event. `head` is put above the exception. */
export function renderEvent(ev, head) {
  const values = exceptionValues(ev);
  const msg = messageOf(ev);
  const tags = tagPairs(ev.tags);
  const raw = h('pre', { class: 'code raw', tabindex: '0' });
  const details = h('details', { class: 'card raw-json' }, h('summary', null, 'Raw event JSON'), raw);
  details.addEventListener('toggle', () => {
    if (details.open && !raw.firstChild) raw.textContent = JSON.stringify(ev, null, 2);
  });
  const facts = kvTable([
    ['event id', h('span', { class: 'mono' }, str(ev.event_id))],
    ['time', ev.timestamp ? h('span', null, absolute(ev.timestamp), ' (', timeAgo(ev.timestamp), ')') : null],
    ['level', ev.level ? levelBadge(ev.level) : null],
    ['release', ev.release],
    ['environment', ev.environment],
    ['server', ev.server_name],
    ['platform', ev.platform],
    ['sdk', ev.sdk && typeof ev.sdk === 'object' ? [ev.sdk.name, ev.sdk.version].filter(Boolean).map(str).join(' ') : null],
  ], 'kv-small');
  const extra = ev.extra && typeof ev.extra === 'object' && !Array.isArray(ev.extra) ? Object.entries(ev.extra) : [];
  return h('div', { class: 'event' },
    head,
    missingDebugFiles(ev),
    minidumpSection(ev),
    values.length
      ? section('Exception', msg && !values.some((v) => v.value === msg) ? h('p', { class: 'ev-message' }, msg) : null, exceptionChain(values))
      : section('Message', h('p', { class: 'ev-message' }, msg || '(no message)')),
    values.some((v) => v.stacktrace && Array.isArray(v.stacktrace.frames) && v.stacktrace.frames.length) ? null : threadStack(ev),
    h('div', { class: 'ev-two' },
      section('Event', facts),
      tags.length ? section('Tags', h('ul', { class: 'tags' }, tags.map(([k, v]) => h('li', { class: 'tag' }, h('span', { class: 'tag-k' }, k), h('span', { class: 'tag-v' }, v))))) : null),
    domainSection(ev),
    extra.length ? section('Extra', kvTable(extra, 'kv-small')) : null,
    breadcrumbs(ev),
    contextsSection(ev),
    details);
}
