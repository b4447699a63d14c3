// End-to-end: the real collector, real Sentry envelopes over HTTP, the
// dashboard in headless Chromium.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { execFileSync } from 'node:child_process';
import { Collector, ADMIN_PASSWORD } from './lib/collector.mjs';
import { send, sendClientReport, newEventId, panicEvent, ioEvent, reqwestEvent, uniqueEvent, xssEvent, XSS } from './lib/events.mjs';
import { launch, watch, loginByApi, screenshot } from './lib/browser.mjs';

const LIVE_MS = 10_000; // polling is every 2 s; allow for a slow machine
// How the pages look and whether they pass axe do not depend on the store: those two checks
// run in the SQLite pass only (scripts/test runs this file again on PostgreSQL).
const LOOKS_ONCE = process.env.ERRSCOPE_TEST_STORE === 'postgres'
  && 'store-independent: checked in the SQLite pass';

describe('dashboard against a real collector', () => {
  let collector;
  let project;
  let browser;
  let context;
  let page;
  let seen;
  let panicIssue;
  const reqwestSample = reqwestEvent();

  before(async () => {
    collector = await Collector.start();
    project = await collector.project(1);
    browser = await launch();
    context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    page = await context.newPage();
    seen = watch(page);
  });

  after(async () => {
    if (browser) await browser.close();
    if (collector) await collector.stop();
  });

  it('serves the app with a Content-Security-Policy that forbids inline scripts', async () => {
    for (const p of ['/', '/login', '/issues/12', '/classes/panic']) {
      const res = await fetch(collector.base + p);
      assert.equal(res.status, 200, `${p} status`);
      assert.match(res.headers.get('content-type') || '', /text\/html/, `${p} content type`);
      const csp = res.headers.get('content-security-policy') || '';
      assert.match(csp, /script-src 'self'(;|$)/, `${p} CSP: ${csp}`);
      assert.match(csp, /default-src 'self'/);
      assert.match(csp, /frame-ancestors 'none'/);
      assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
      const html = await res.text();
      assert.match(html, /<script type="module" src="\/assets\/app\.js"><\/script>/);
      assert.doesNotMatch(html.replace(/<script[^>]*src="[^"]+"[^>]*><\/script>/g, ''), /<script/i, 'no inline script in index.html');
    }
    const js = await fetch(`${collector.base}/assets/app.js`);
    assert.equal(js.status, 200);
    assert.match(js.headers.get('content-type') || '', /javascript/, 'module scripts need a JavaScript MIME type');
    const css = await fetch(`${collector.base}/assets/app.css`);
    assert.match(css.headers.get('content-type') || '', /text\/css/);
    const anon = await fetch(`${collector.base}/api/0/projects/`);
    assert.equal(anon.status, 401, 'the API needs a session');
  });

  it('logs in (wrong password refused) and shows the DSN while there are no errors', async () => {
    await page.goto(`${collector.base}/`);
    await page.waitForURL(/\/login/);
    await page.fill('#login-pass', 'not the password');
    await page.click('form button[type=submit]');
    await page.getByText('Wrong username or password.').waitFor();
    await screenshot(page, 'login-1280-light');

    await page.fill('#login-pass', ADMIN_PASSWORD);
    await page.press('#login-pass', 'Enter');
    await page.waitForURL(`${collector.base}/`);
    await page.getByRole('heading', { name: 'No errors yet — here is your DSN' }).waitFor();
    assert.equal(await page.locator('.dsn-value').first().textContent(), project.dsn);
    assert.ok((await page.locator('.snippet pre').first().textContent()).includes(`errscope::init(errscope::Options::new().dsn("${project.dsn}"))`));

    const cookie = (await context.cookies()).find((c) => c.name === 'errscope_session');
    assert.ok(cookie, 'session cookie set');
    assert.equal(cookie.httpOnly, true);
    assert.equal(cookie.sameSite, 'Strict');
    await screenshot(page, 'empty-1280-light');
  });

  it('shows the classes live as the first events arrive, programmer and operational apart', async () => {
    // The empty page is still open: the first events must appear without a reload.
    await page.evaluate(() => { window.__noReload = true; });
    await send(collector, project, [panicEvent(), panicEvent(), panicEvent({ environment: 'staging', server: 'web-2' })]);
    await send(collector, project, [ioEvent(), ioEvent()], { gzip: true });
    await send(collector, project, reqwestSample);
    await page.locator('tr.class-row').nth(2).waitFor({ timeout: LIVE_MS });
    assert.equal(await page.evaluate(() => window.__noReload), true, 'no reload happened');

    const classes = await collector.api('/api/0/projects/1/classes/?status=unresolved');
    assert.equal(classes.length, 3, JSON.stringify(classes));
    assert.ok(classes.some((c) => c.class === 'panic' && c.kind === 'programmer'), 'a panic class of kind programmer');
    for (const c of classes) {
      const row = page.locator('tr.class-row', { has: page.locator('a.class-name', { hasText: c.class }) });
      await row.waitFor();
      assert.equal(await row.locator('a.class-name').textContent(), c.class);
      assert.equal(await row.locator('.badge').textContent(), c.kind === 'programmer' ? 'Programmer' : 'Operational');
      assert.equal(await row.locator('td.issues-cell').textContent(), String(c.issues));
      assert.equal(await row.locator('svg.spark polyline').count(), 1);
    }
    // The header's live dot says polling works; client reports show as a quiet notice.
    await page.locator('.live[data-state=ok]').waitFor();
    await sendClientReport(collector, project, [{ reason: 'queue_overflow', category: 'error', quantity: 12 }]);
    await page.reload();
    await page.locator('.notice', { hasText: '12 errors (queue_overflow)' }).waitFor();
    // Keyboard: the first Tab reaches the skip link, which shows itself.
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Skip to content');
    assert.ok(await page.locator('a.skip').isVisible());

    const panicRow = page.locator('tr.class-row', { has: page.locator('a.class-name', { hasText: /^panic$/ }) });
    assert.match(await panicRow.getAttribute('class'), /kind-row-programmer/);
    await screenshot(page, 'classes-1280-light');
    // An io error link with the agent's mechanism.data.io_kind is classed by its kind.
    assert.ok(classes.some((c) => c.class === 'std::io::Error: ConnectionReset' && c.kind === 'operational'),
      `an io class "std::io::Error: ConnectionReset" of kind operational, got ${JSON.stringify(classes.map((c) => c.class))}`);
  });

  it('opens a class: its issue list', async () => {
    await page.locator('a.class-name', { hasText: /^panic$/ }).click();
    await page.waitForURL(/\/issues\?class=panic/);
    await page.locator('tr.issue-row').first().waitFor();
    const api = await collector.api('/api/0/projects/1/issues/?class=panic');
    assert.equal(api.data.length, 1);
    panicIssue = api.data[0];
    assert.equal(await page.locator('tr.issue-row').count(), 1);
    const row = page.locator('tr.issue-row').first();
    assert.equal(await row.locator('a.issue-title').textContent(), panicIssue.title);
    assert.equal(await row.locator('.count-cell').textContent(), '3');
    assert.equal(await row.locator('.culprit').textContent(), panicIssue.culprit);
    assert.match(panicIssue.culprit, /checkout/, 'culprit is the top in-app frame');
    assert.equal(await page.locator('main h1').textContent(), 'panic');
    await page.locator('.class-summary .badge', { hasText: 'Programmer' }).waitFor();
    assert.match(await page.locator('.class-summary').textContent(), /1 issue3 events/);
    await screenshot(page, 'class-1280-light');

    // Everything: three issues; the filters narrow it.
    await page.goto(`${collector.base}/issues`);
    await page.locator('tr.issue-row').nth(2).waitFor();
    assert.equal(await page.locator('tr.issue-row').count(), 3);
    await page.selectOption('select[name=environment]', 'staging');
    await page.waitForURL(/environment=staging/);
    await page.waitForFunction(() => document.querySelectorAll('tr.issue-row').length === 2);
    await page.locator('main h1').click();
    await page.keyboard.press('j');
    await page.keyboard.press('j');
    assert.equal(await page.evaluate(() => document.activeElement.className), 'issue-title', '"j" moves through the rows');
    await page.keyboard.press('k');
    assert.equal(await page.evaluate(() => document.activeElement === document.querySelector('a.issue-title')), true);
    await page.keyboard.press('/');
    assert.equal(await page.evaluate(() => document.activeElement.getAttribute('type')), 'search', '"/" focuses the search box');
    await page.keyboard.type('payments'); // searched as typed, after a pause
    await page.waitForURL(/query=payments/);
    assert.equal(await page.evaluate(() => document.activeElement.getAttribute('type')), 'search', 'the search box keeps the focus');
    await page.waitForFunction(() => document.querySelectorAll('tr.issue-row').length === 1);
    assert.match(await page.locator('a.issue-title').textContent(), /error sending request/);
  });

  it('opens an issue: chart, tags, exception chain outermost first, backtrace with in-app frames and library frames folded', async () => {
    const io = (await collector.api('/api/0/projects/1/issues/?query=ldap')).data[0];
    assert.ok(io, 'the io issue exists');
    await page.goto(`${collector.base}/issues`);
    await page.locator('a.issue-title', { hasText: io.title }).click();
    await page.waitForURL(`${collector.base}/issues/${io.id}`);
    await page.locator('.exc').first().waitFor();
    assert.equal(await page.locator('main h1').textContent(), io.title);
    assert.equal(await page.locator('svg.bars g.bar').count(), 336, '14 days of hourly bars');
    await page.getByRole('button', { name: '24 hours' }).click();
    assert.equal(await page.locator('svg.bars g.bar').count(), 24, 'the last 24 hours');
    assert.equal(await page.locator('svg.bars rect.bar-fill').count(), 1, 'both events in the current hour');
    await page.getByRole('button', { name: '14 days' }).click();
    assert.equal(await page.locator('svg.bars g.bar').count(), 336);
    await page.locator('.tag-key', { hasText: 'environment' }).getByText('production').waitFor();

    // Sentry lists the root cause first; the page shows the outermost error first.
    const types = await page.locator('.exc-type').allTextContents();
    assert.deepEqual(types, ['shop::ldap::BindError', 'std::io::Error']);
    assert.equal(await page.locator('.exc-cause').count(), 1);

    const inApp = page.locator('.frame.in-app');
    assert.equal(await inApp.count(), 3);
    assert.deepEqual(await inApp.locator('.frame-fn').allTextContents(), ['shop::ldap::bind', 'shop::auth::login', 'shop::main']);
    for (let i = 0; i < 3; i++) assert.ok(await inApp.nth(i).isVisible());
    const lib = page.locator('.frames-folded .frame');
    assert.equal(await lib.count(), 4);
    for (let i = 0; i < 4; i++) assert.equal(await lib.nth(i).isVisible(), false, 'library frames are collapsed');
    const toggle = page.locator('.frames-toggle').last();
    assert.equal(await toggle.getAttribute('aria-expanded'), 'false');
    await toggle.focus();
    await page.keyboard.press('Enter');
    assert.equal(await toggle.getAttribute('aria-expanded'), 'true');
    await page.locator('.frame-fn', { hasText: 'tokio::runtime::runtime::Runtime::block_on' }).waitFor({ state: 'visible' });
    // Highlighted means it looks different: in-app frames have their own background and mark.
    const look = (sel) => page.locator(sel).first().evaluate((el) => {
      const cs = getComputedStyle(el);
      return `${cs.backgroundColor} ${cs.boxShadow}`;
    });
    assert.notEqual(await look('.frame.in-app'), await look('.frames-folded .frame'));

    // Domain context, breadcrumbs, raw JSON.
    await page.locator('.domain-name', { hasText: 'auth' }).waitFor();
    await page.locator('.crumb-msg', { hasText: 'slow query: 812 ms' }).waitFor();
    await page.locator('.raw-json summary').click();
    await page.locator('pre.raw', { hasText: '"event_id"' }).waitFor();
    const raw = JSON.parse(await page.locator('pre.raw').textContent());
    assert.equal(raw.issue_id, io.id);

    // The sidebar lists the issue's events, newest first, the one shown marked.
    const listed = page.locator('.event-list a');
    assert.equal(await listed.count(), 2);
    assert.equal(await listed.first().getAttribute('aria-current'), 'true');

    // Older/newer navigation between the two events of the issue.
    await page.locator('a', { hasText: '← Older' }).click();
    await page.waitForURL(new RegExp(`/issues/${io.id}/events/[0-9a-f]{32}$`));
    await page.getByRole('heading', { name: /^Event / }).waitFor();
    assert.equal(await listed.nth(1).getAttribute('aria-current'), 'true');
    await page.locator('a', { hasText: 'Newer →' }).click();
    await page.getByRole('heading', { name: /^Latest event/ }).waitFor();
    assert.equal(await listed.first().getAttribute('aria-current'), 'true');
  });

  it('resolves an issue, and a new event reopens it as a regression, live', async () => {
    await page.goto(`${collector.base}/issues/${panicIssue.id}`);
    await page.locator('.frame.in-app').first().waitFor();
    await screenshot(page, 'issue-1280-light');
    await page.getByRole('button', { name: 'Resolve' }).click();
    await page.locator('.status-now[data-status=resolved]').waitFor();
    await page.getByRole('button', { name: 'Reopen' }).waitFor();
    assert.equal((await collector.api(`/api/0/issues/${panicIssue.id}/`)).status, 'resolved');

    const shownBefore = await page.locator('.event-id').textContent();
    const newer = panicEvent();
    await send(collector, project, newer);
    const after = await collector.api(`/api/0/issues/${panicIssue.id}/`);
    assert.equal(after.status, 'unresolved');
    assert.equal(after.is_regression, true);
    // The open page notices by itself.
    await page.locator('.issue-head .badge.regression').waitFor({ timeout: LIVE_MS });
    await page.locator('.status-now[data-status=unresolved]').waitFor();
    assert.equal(await page.locator('.facts dd').first().textContent(), '4');
    // The event being read stays; the newer one is offered.
    assert.equal(await page.locator('.event-id').textContent(), shownBefore);
    await page.locator('.newer-bar').getByRole('button', { name: 'Show it' }).click();
    await page.locator('.event-id', { hasText: newer.event_id.slice(0, 12) }).waitFor();
    assert.equal(await page.locator('.newer-bar').count(), 0);
    await page.goto(`${collector.base}/issues`);
    const row = page.locator(`tr.issue-row[data-issue-id="${panicIssue.id}"]`);
    await row.locator('.badge.regression').waitFor();
  });

  it('mutes an issue: it leaves the unresolved list and shows under Muted', async () => {
    const rq = (await collector.api('/api/0/projects/1/issues/?class=reqwest::Error')).data[0];
    await page.goto(`${collector.base}/issues/${rq.id}`);
    await page.getByRole('button', { name: 'Mute' }).click();
    await page.getByRole('button', { name: 'Unmute' }).waitFor();
    assert.equal((await collector.api(`/api/0/issues/${rq.id}/`)).status, 'muted');
    await page.goto(`${collector.base}/issues`);
    await page.locator('tr.issue-row').first().waitFor();
    assert.equal(await page.locator(`tr.issue-row[data-issue-id="${rq.id}"]`).count(), 0);
    await page.getByRole('link', { name: 'Muted' }).click();
    await page.waitForURL(/status=muted/);
    await page.locator(`tr.issue-row[data-issue-id="${rq.id}"] .badge.status-muted`).waitFor();
    await page.goto(`${collector.base}/issues/${rq.id}`);
    await page.getByRole('button', { name: 'Unmute' }).click();
    await page.getByRole('button', { name: 'Mute' }).waitFor();
    assert.equal((await collector.api(`/api/0/issues/${rq.id}/`)).status, 'unresolved');
  });

  it('adds an agent\'s aggregate count (errscope.counts) to the issue, live', async () => {
    const rq = (await collector.api('/api/0/projects/1/issues/?class=reqwest::Error')).data[0];
    await page.goto(`${collector.base}/issues/${rq.id}`);
    await page.locator('.exc').first().waitFor();
    assert.equal(await page.locator('.facts dd').first().textContent(), String(rq.count));
    const now = Date.now() / 1000;
    const item = JSON.stringify({ counts: [{ id: newEventId(), event_id: reqwestSample.event_id, count: 9990, start: now - 60, end: now }] });
    const body = `${JSON.stringify({ dsn: project.dsn })}\n${JSON.stringify({ type: 'errscope.counts', length: Buffer.byteLength(item) })}\n${item}\n`;
    const res = await fetch(`${collector.base}/api/1/envelope/`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-sentry-envelope', 'X-Sentry-Auth': `Sentry sentry_key=${project.key}, sentry_version=7` },
      body,
    });
    assert.equal(res.status, 200);
    const total = rq.count + 9990;
    await page.locator('.facts dd', { hasText: total.toLocaleString('en-US') }).waitFor({ timeout: LIVE_MS });
    await page.goto(`${collector.base}/issues?sort=count`);
    const row = page.locator('tr.issue-row').first();
    assert.equal(await row.getAttribute('data-issue-id'), String(rq.id), 'sorted by count, the storm comes first');
    assert.equal(await row.locator('.count-cell').textContent(), '10k');
    assert.equal(await row.locator('.count-cell').getAttribute('title'), `${total.toLocaleString('en-US')} events`);
  });

  it('shows a new issue live on the issue list, without a reload', async () => {
    await page.goto(`${collector.base}/issues`);
    await page.locator('tr.issue-row').first().waitFor();
    await page.evaluate(() => { window.__noReload = true; });
    const before = await page.locator('tr.issue-row').count();
    const focusedKey = await page.locator('a.issue-title').nth(1).getAttribute('data-key');
    await page.locator('a.issue-title').nth(1).focus();
    await page.waitForTimeout(2500); // let the poller see the current seq first
    await send(collector, project, uniqueEvent('nightly_export'));
    await page.locator('a.issue-title', { hasText: 'job nightly_export failed' }).waitFor({ timeout: LIVE_MS });
    assert.equal(await page.locator('tr.issue-row').count(), before + 1);
    assert.equal(await page.evaluate(() => window.__noReload), true);
    assert.match(await page.locator('tr.issue-row').first().getAttribute('class'), /row-new/);
    assert.equal(await page.evaluate(() => document.activeElement.dataset.key), focusedKey, 'the refresh keeps the keyboard focus');
    await screenshot(page, 'issues-1280-light');
  });

  for (const bypassCSP of [false, true]) {
    it(`renders hostile event strings as literal text and runs nothing${bypassCSP ? ' (even with the CSP disabled)' : ''}`, async () => {
      const ev = xssEvent();
      await send(collector, project, ev);
      const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, bypassCSP });
      await loginByApi(ctx, collector.base);
      const p = await ctx.newPage();
      const s = watch(p);
      try {
        const stored = await collector.api(`/api/0/projects/1/events/${ev.event_id}/`);
        await p.goto(`${collector.base}/issues/${stored.issue_id}`);
        await p.locator('.exc-type').first().waitFor();
        assert.equal(await p.locator('.exc-type').first().textContent(), XSS.type);
        assert.equal(await p.locator('.exc-value').first().textContent(), XSS.value);
        assert.ok((await p.locator('.ev-message').allTextContents()).includes(XSS.message), 'message shown literally');
        assert.ok((await p.locator('.frame-fn').allTextContents()).includes(XSS.fn), 'function name shown literally');
        assert.ok((await p.locator('.frame-loc').allTextContents()).some((t) => t.includes(XSS.file)));
        assert.ok((await p.locator('.tag-v').allTextContents()).includes(XSS.tag), 'tag value shown literally');
        assert.ok((await p.locator('.tag-k').allTextContents()).includes(XSS.tagKey), 'tag key shown literally');
        assert.ok((await p.locator('.crumb-msg').allTextContents()).includes(XSS.crumb), 'breadcrumb shown literally');
        assert.equal(await p.locator('.domain-name .mono').textContent(), XSS.domain);
        assert.ok((await p.locator('.tag-val-name').allTextContents()).includes(XSS.domain), 'top tag value shown literally');
        const extra = p.locator('section.ev-section', { has: p.locator('h3', { hasText: 'Extra' }) });
        assert.equal(await extra.locator('th').first().textContent(), XSS.tagKey);
        assert.equal(await extra.locator('td').first().textContent(), XSS.crumb);
        await p.locator('.raw-json summary').click();
        await p.locator('pre.raw', { hasText: '"event_id"' }).waitFor();
        assert.ok((await p.locator('pre.raw').textContent()).includes(JSON.stringify(XSS.message).slice(1, -1)));

        // The list and the classes show the same strings as text too.
        const issue = await collector.api(`/api/0/issues/${stored.issue_id}/`);
        await p.goto(`${collector.base}/issues?status=all&class=${encodeURIComponent(issue.class)}`);
        await p.locator('a.issue-title').first().waitFor();
        assert.equal(await p.locator('a.issue-title').first().textContent(), issue.title);
        await p.goto(`${collector.base}/?status=all`);
        await p.locator('a.class-name', { hasText: issue.class }).waitFor();
        await p.waitForTimeout(500);

        const injected = await p.evaluate(() => ({
          xss: window.__xss,
          scripts: [...document.scripts].map((x) => x.getAttribute('src')),
          imgs: document.querySelectorAll('img[src="x"], iframe, svg[onload], [onerror], [onload]').length,
          bold: document.querySelectorAll('main b').length,
        }));
        assert.equal(injected.xss, undefined, 'no payload ran');
        assert.deepEqual(injected.scripts, ['/assets/boot.js', '/assets/app.js']);
        assert.equal(injected.imgs, 0, 'no element was created from event data');
        assert.equal(injected.bold, 0);
        assert.deepEqual(s.dialogs, [], 'no dialog opened');
        assert.deepEqual(s.errors, [], 'no page error');
        assert.deepEqual(s.console.filter((m) => !/favicon/.test(m)), [], 'nothing logged to the console');
      } finally {
        await ctx.close();
      }
    });
  }

  it('refuses a cookie-authenticated mutation without the CSRF header', async () => {
    const status = await page.evaluate(async (id) => {
      const r = await fetch(`/api/0/issues/${id}/`, { method: 'PUT', headers: { 'Content-Type': 'application/json' }, body: '{"status":"muted"}' });
      return r.status;
    }, panicIssue.id);
    assert.equal(status, 403);
    assert.equal((await collector.api(`/api/0/issues/${panicIssue.id}/`)).status, 'unresolved');
  });

  it('shows the setup page with each project\'s DSN, and switches projects', async () => {
    await page.goto(`${collector.base}/projects`);
    await page.locator('.project-card').first().waitFor();
    assert.equal(await page.locator('.project-card .dsn-value').first().textContent(), project.dsn);
    await page.fill('#new-project', 'billing');
    await page.click('form.inline-form button[type=submit]');
    await page.locator('.project-card h2', { hasText: 'billing' }).waitFor();
    // With two projects the header gets a switcher; the new project is empty.
    await page.locator('select.project-select').waitFor();
    await page.getByRole('link', { name: 'Classes' }).click();
    await page.getByRole('heading', { name: 'No errors yet — here is your DSN' }).waitFor();
    // The empty state's curl command works as printed, and its event shows up live.
    await page.locator('details.curl summary').click();
    const cmd = await page.locator('details.curl pre').textContent();
    assert.match(cmd, /\/api\/2\/store\//);
    const out = execFileSync('sh', ['-c', cmd], { encoding: 'utf8', timeout: 10_000 });
    assert.match(out, /"id"/, `curl answered ${out}`);
    await page.locator('a.class-name', { hasText: 'message' }).waitFor({ timeout: LIVE_MS });
    await page.selectOption('select.project-select', '1');
    await page.locator('tr.class-row').first().waitFor();
    await screenshot(page, 'setup-1280-light');
  });

  it('saves screenshots of each main page at 1280 px and 390 px, light and dark', { skip: LOOKS_ONCE }, async () => {
    const pages = [
      ['login', '/login'],
      ['classes', '/'],
      ['issues', '/issues'],
      ['issue', `/issues/${panicIssue.id}`],
      ['setup', '/projects'],
    ];
    for (const [width, height] of [[1280, 900], [390, 844]]) {
      for (const colorScheme of ['light', 'dark']) {
        const ctx = await browser.newContext({ viewport: { width, height }, colorScheme });
        const p = await ctx.newPage();
        const s = watch(p);
        await p.goto(`${collector.base}/login`);
        await p.locator('#login-pass').waitFor();
        await screenshot(p, `login-${width}-${colorScheme}`);
        await loginByApi(ctx, collector.base);
        for (const [name, path] of pages.slice(1)) {
          await p.goto(collector.base + path);
          await p.locator('main h1').waitFor();
          await p.waitForLoadState('networkidle');
          // The page fits the viewport's width: nothing scrolls sideways.
          const overflow = await p.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
          assert.ok(overflow <= 0, `${name} at ${width}px overflows by ${overflow}px`);
          await screenshot(p, `${name}-${width}-${colorScheme}`);
        }
        assert.deepEqual(s.errors, []);
        await ctx.close();
      }
    }
  });

  it('switches between light and dark and remembers it', async () => {
    await page.goto(`${collector.base}/`);
    await page.locator('main h1').waitFor();
    const bg = () => page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    const btn = page.locator('.topbar .icon-btn');
    await btn.click(); // auto -> light
    assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), 'light');
    const light = await bg();
    await btn.click(); // light -> dark
    assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), 'dark');
    const dark = await bg();
    assert.notEqual(light, dark);
    await page.reload();
    await page.locator('main h1').waitFor();
    assert.equal(await bg(), dark, 'the choice survives a reload');
    await btn.click(); // dark -> auto
    assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), undefined);
  });

  it('answers unknown pages and issues with a way back', async () => {
    await page.goto(`${collector.base}/no/such/page`);
    await page.getByRole('heading', { name: 'Page not found' }).waitFor();
    await page.goto(`${collector.base}/issues/987654`);
    await page.getByRole('heading', { name: 'Issue #987654 does not exist' }).waitFor();
    await page.getByRole('link', { name: 'Back to the issues' }).click();
    await page.waitForURL(`${collector.base}/issues`);
  });

  it('sends an expired session back to the login page, then to where it was', async () => {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    await loginByApi(ctx, collector.base);
    const p = await ctx.newPage();
    try {
      await p.goto(`${collector.base}/issues?status=all`);
      await p.locator('tr.issue-row').first().waitFor();
      await ctx.clearCookies(); // the next poll gets a 401
      await p.waitForURL(/\/login\?next=/, { timeout: LIVE_MS });
      await p.fill('#login-pass', ADMIN_PASSWORD);
      await p.press('#login-pass', 'Enter');
      await p.waitForURL(`${collector.base}/issues?status=all`);
      await p.locator('tr.issue-row').first().waitFor();
    } finally {
      await ctx.close();
    }
  });

  it('passes axe-core\'s WCAG 2 A/AA checks on every page, light and dark, 1280 px and 390 px', { skip: LOOKS_ONCE }, async () => {
    const axePath = createRequire(import.meta.url).resolve('axe-core/axe.min.js');
    const pages = [['login', '/login'], ['classes', '/'], ['issues', '/issues?status=all'], ['issue', `/issues/${panicIssue.id}`], ['setup', '/projects']];
    const problems = [];
    for (const [colorScheme, width] of [['light', 1280], ['dark', 1280], ['light', 390], ['dark', 390]]) {
      // The CSP (rightly) refuses the injected checker; the page's own code is unchanged.
      const ctx = await browser.newContext({ viewport: { width, height: 900 }, colorScheme, bypassCSP: true });
      const p = await ctx.newPage();
      for (const [name, path] of pages) {
        if (name === 'classes') await loginByApi(ctx, collector.base);
        await p.goto(collector.base + path);
        await p.locator('main h1').waitFor();
        await p.waitForLoadState('networkidle');
        await p.addScriptTag({ path: axePath });
        const violations = await p.evaluate(async () => {
          const r = await window.axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } });
          return r.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical')
            .map((v) => `${v.id} (${v.impact}): ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')}`);
        });
        for (const v of violations) problems.push(`${name} ${colorScheme} ${width}px: ${v}`);
      }
      await ctx.close();
    }
    assert.deepEqual(problems, []);
  });

  it('logs out', async () => {
    await page.goto(`${collector.base}/`);
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.waitForURL(/\/login/);
    const status = await page.evaluate(async () => (await fetch('/api/0/session/')).status);
    assert.equal(status, 401);
    assert.deepEqual(seen.dialogs, []);
    assert.deepEqual(seen.errors, []);
  });
});

describe('dashboard source', () => {
  it('never parses strings as HTML or code, and index.html has nothing inline', async () => {
    const { readdir, readFile } = await import('node:fs/promises');
    const path = await import('node:path');
    const root = new URL('../static/', import.meta.url).pathname;
    const files = (await readdir(root, { recursive: true })).filter((f) => /\.(js|html)$/.test(f));
    assert.ok(files.length >= 10, `found ${files.length} files`);
    for (const f of files) {
      const src = (await readFile(path.join(root, f), 'utf8')).replace(/^\s*\/\/.*$/gm, '');
      for (const bad of [/\.innerHTML\b/, /\.outerHTML\b/, /insertAdjacentHTML/, /document\.write/, /\beval\(/, /new Function\(/, /createContextualFragment/, /DOMParser/]) {
        assert.doesNotMatch(src, bad, `${f} uses ${bad}`);
      }
    }
    const html = await readFile(path.join(root, 'index.html'), 'utf8');
    assert.doesNotMatch(html, /\sstyle=/, 'no inline style attributes');
    assert.doesNotMatch(html, /\son[a-z]+=/i, 'no inline event handlers');
    assert.doesNotMatch(html, /<script(?![^>]*\ssrc=)[^>]*>/, 'no inline scripts');
  });
});
