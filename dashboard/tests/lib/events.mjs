// Sentry events shaped the way the errscope agent produces them, and the
// envelope transport (optionally gzip) that sends them to the collector.
import { randomUUID } from 'node:crypto';
import { gzipSync } from 'node:zlib';

export const newEventId = () => randomUUID().replace(/-/g, '');
const iso = (ms = Date.now()) => new Date(ms).toISOString();

const STD_FRAMES = [
  { function: 'std::rt::lang_start_internal', module: 'std::rt', filename: 'rt.rs', abs_path: '/rustc/90b35a6239c3d8bdabc530a6a0816f7ff89a0aaf/library/std/src/rt.rs', lineno: 174, in_app: false, instruction_addr: '0x55d0c1a2b3c4' },
  { function: 'std::rt::lang_start::{{closure}}', module: 'std::rt', filename: 'rt.rs', lineno: 195, in_app: false, instruction_addr: '0x55d0c1a2b400' },
  { function: 'tokio::runtime::runtime::Runtime::block_on', module: 'tokio::runtime::runtime', filename: 'runtime.rs', abs_path: '/home/ci/.cargo/registry/src/tokio-1.41.1/src/runtime/runtime.rs', lineno: 335, in_app: false, instruction_addr: '0x55d0c1a2c000' },
];

function frame(fn, file, line, extra = {}) {
  const module = fn.split('::').slice(0, -1).join('::');
  return { function: fn, module, filename: file, abs_path: `/srv/shop/${file}`, lineno: line, colno: 17, in_app: true, instruction_addr: '0x55d0c1a0' + String(line).padStart(4, '0'), ...extra };
}

function base({ level = 'error', release = 'shop@1.4.2', environment = 'production', server = 'web-1', ts = Date.now() } = {}) {
  return {
    event_id: newEventId(),
    timestamp: iso(ts),
    level,
    platform: 'native',
    release,
    environment,
    server_name: server,
    tags: { region: 'eu-west-1', domain: 'checkout' },
    contexts: {
      os: { type: 'os', name: 'Linux', version: '6.1.0-27-amd64' },
      runtime: { type: 'runtime', name: 'rustc', version: '1.83.0' },
      thread: { id: 7, name: 'tokio-runtime-worker' },
      domain: { name: 'checkout', tags: { order_id: 'A-1001' }, data: { items: 3, total_cents: 4599 } },
    },
    extra: { capture_location: 'src/cart.rs:118:31' },
    sdk: { name: 'errscope', version: '0.1.0' },
    breadcrumbs: {
      values: [
        { timestamp: (ts - 2500) / 1000, category: 'http', level: 'info', message: 'GET /cart 200 (12 ms)' },
        { timestamp: (ts - 900) / 1000, category: 'db', level: 'warning', message: 'slow query: 812 ms' },
      ],
    },
  };
}

/** A panic at shop::cart::checkout (programmer error). */
export function panicEvent(opts = {}) {
  const ev = base({ level: 'fatal', ...opts });
  ev.exception = {
    values: [{
      type: 'panic',
      value: 'called `Option::unwrap()` on a `None` value',
      mechanism: { type: 'panic', handled: false, data: { thread: 'tokio-runtime-worker' } },
      stacktrace: {
        frames: [
          ...STD_FRAMES,
          frame('shop::main', 'src/main.rs', 42),
          frame('shop::http::handle', 'src/http.rs', 88),
          frame(opts.fn || 'shop::cart::checkout', 'src/cart.rs', 118),
          { function: 'core::option::unwrap_failed', module: 'core::option', filename: 'option.rs', lineno: 2015, in_app: false, instruction_addr: '0x55d0c1a3f000' },
          { function: 'core::panicking::panic', module: 'core::panicking', filename: 'panicking.rs', lineno: 148, in_app: false, instruction_addr: '0x55d0c1a3f100' },
          { function: 'core::panicking::panic_fmt', module: 'core::panicking', filename: 'panicking.rs', lineno: 74, in_app: false, instruction_addr: '0x55d0c1a3f200' },
        ],
      },
    }],
  };
  ev.tags = { ...ev.tags, route: '/checkout' };
  return ev;
}

/** ldap bind failed, caused by std::io::Error ConnectionReset (operational). Root cause first, per Sentry. */
export function ioEvent(opts = {}) {
  const ev = base({ server: 'web-2', ...opts });
  ev.exception = {
    values: [
      {
        type: 'std::io::Error',
        value: 'connection reset by peer (os error 104)',
        mechanism: {
          type: 'chained', handled: true,
          data: { io_kind: 'ConnectionReset', os_code: 104 },
          meta: { errno: { number: 104, name: 'ECONNRESET' } },
        },
      },
      {
        type: 'shop::ldap::BindError',
        value: `ldap bind failed for uid=${Math.floor(Math.random() * 1e6)}`,
        mechanism: { type: 'generic', handled: true },
        stacktrace: {
          frames: [
            ...STD_FRAMES,
            frame('shop::main', 'src/main.rs', 42),
            frame('shop::auth::login', 'src/auth.rs', 61),
            frame('shop::ldap::bind', 'src/ldap.rs', 203),
            { function: 'ldap3::conn::LdapConnAsync::send', module: 'ldap3::conn', filename: 'conn.rs', lineno: 411, in_app: false },
          ],
        },
      },
    ],
  };
  ev.contexts.domain = { name: 'auth', tags: { directory: 'corp' }, data: { attempt: 2 } };
  ev.tags.domain = 'auth';
  return ev;
}

/** A handled reqwest error with its own message. */
export function reqwestEvent(opts = {}) {
  const ev = base({ level: 'warning', release: 'shop@1.4.1', environment: 'staging', server: 'web-3', ...opts });
  ev.exception = {
    values: [{
      type: 'reqwest::Error',
      value: 'error sending request for url (https://payments.internal/v1/charge/7731): operation timed out',
      mechanism: { type: 'generic', handled: true },
      stacktrace: { frames: [...STD_FRAMES, frame('shop::main', 'src/main.rs', 42), frame('shop::payments::charge', 'src/payments.rs', 77)] },
    }],
  };
  ev.contexts.domain = { name: 'payments', tags: { provider: 'acme' }, data: {} };
  ev.tags.domain = 'payments';
  return ev;
}

/** An event with a fingerprint of its own: one new issue each time `name` changes. */
export function uniqueEvent(name, opts = {}) {
  const ev = base({ ...opts });
  ev.fingerprint = [`test-${name}`];
  ev.exception = {
    values: [{
      type: 'shop::jobs::JobError',
      value: `job ${name} failed`,
      mechanism: { type: 'generic', handled: true },
      stacktrace: { frames: [...STD_FRAMES, frame(`shop::jobs::${name.replace(/[^a-z0-9_]/gi, '_')}`, 'src/jobs.rs', 10)] },
    }],
  };
  return ev;
}

export const XSS = {
  message: '<script>window.__xss = "message"; alert("message")</script>',
  type: '<img src=x onerror="window.__xss=\'type\'; alert(\'type\')">',
  value: '<script>alert("value")</script> & <b>bold</b>',
  fn: '<img src=x onerror=alert("fn")>::<script>alert(1)</script>',
  file: '<svg onload=alert("file")>.rs',
  tag: '<img src=x onerror="window.__xss=\'tag\'">',
  tagKey: 'x<script>alert("key")</script>',
  crumb: '<script>window.__xss = "crumb"</script>',
  domain: '<iframe src="javascript:alert(\'domain\')"></iframe>',
};

/** Every attacker-controlled field carries an HTML payload. */
export function xssEvent(opts = {}) {
  const ev = base({ ...opts });
  ev.message = XSS.message;
  ev.exception = {
    values: [{
      type: XSS.type,
      value: XSS.value,
      mechanism: { type: 'generic', handled: true },
      stacktrace: {
        frames: [
          ...STD_FRAMES,
          { function: XSS.fn, module: 'shop::evil', filename: XSS.file, abs_path: `/srv/${XSS.file}`, lineno: 1, in_app: true },
        ],
      },
    }],
  };
  ev.tags = { payload: XSS.tag, [XSS.tagKey]: 'v', domain: XSS.domain };
  ev.breadcrumbs.values.push({ timestamp: Date.now() / 1000, category: 'xss', level: 'error', message: XSS.crumb });
  ev.contexts.domain = { name: XSS.domain, tags: { t: XSS.tag }, data: { d: XSS.message } };
  ev.extra = { [XSS.tagKey]: XSS.crumb };
  return ev;
}

/** Builds a Sentry envelope (several event items are an errscope extension). */
export function envelope(events, dsn) {
  const lines = [JSON.stringify({ event_id: events[0].event_id, dsn, sent_at: iso() })];
  for (const ev of events) {
    const payload = JSON.stringify(ev);
    lines.push(JSON.stringify({ type: 'event', length: Buffer.byteLength(payload), content_type: 'application/json' }));
    lines.push(payload);
  }
  return lines.join('\n') + '\n';
}

/** Sends events in one envelope; resolves once the collector answered 200 (committed). */
export async function send(collector, project, events, { gzip = false } = {}) {
  const list = Array.isArray(events) ? events : [events];
  const body = envelope(list, project.dsn);
  const headers = {
    'Content-Type': 'application/x-sentry-envelope',
    'X-Sentry-Auth': `Sentry sentry_key=${project.key}, sentry_version=7, sentry_client=errscope-dashboard-tests/0.0`,
  };
  let data = body;
  if (gzip) {
    headers['Content-Encoding'] = 'gzip';
    data = gzipSync(Buffer.from(body));
  }
  const res = await fetch(`${collector.base}/api/${project.id}/envelope/`, { method: 'POST', headers, body: data });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`envelope rejected: HTTP ${res.status} ${text}`);
  return JSON.parse(text || '{}');
}

/** Sends a client report: events the SDK had to drop. */
export async function sendClientReport(collector, project, discarded) {
  const item = JSON.stringify({ timestamp: Date.now() / 1000, discarded_events: discarded });
  const body = `${JSON.stringify({ dsn: project.dsn, sent_at: iso() })}\n${JSON.stringify({ type: 'client_report', length: Buffer.byteLength(item) })}\n${item}\n`;
  const res = await fetch(`${collector.base}/api/${project.id}/envelope/`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-sentry-envelope', 'X-Sentry-Auth': `Sentry sentry_key=${project.key}, sentry_version=7` },
    body,
  });
  if (res.status !== 200) throw new Error(`client report rejected: HTTP ${res.status} ${await res.text()}`);
}
