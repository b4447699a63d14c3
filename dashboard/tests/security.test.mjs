// Hostile strings in every field of an event, through the real collector into the
// dashboard in headless Chromium (with the CSP bypassed, so only the rendering keeps
// them inert): every one is shown as literal text, and nothing is created or run from it.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Collector } from './lib/collector.mjs';
import { send, newEventId } from './lib/events.mjs';
import { launch, watch, loginByApi, screenshot } from './lib/browser.mjs';

/** SQL-looking and script-looking strings; each sets window.__xss if it ever runs. */
const HOSTILE = [
  "'; DROP TABLE events;--",
  '" OR 1=1 --',
  "%' OR 1=1; --",
  '<script>window.__xss = "script"; alert(1)</script>',
  '<img src=x onerror="window.__xss = \'img\'; alert(1)">',
  'javascript:window.__xss = "js"; alert(1)//',
  '"><svg onload="window.__xss = \'svg\'">',
  '<a href="javascript:alert(1)" id="xss-link">click</a>',
  '<iframe srcdoc="<script>parent.__xss = 1</script>"></iframe>',
];

/** An event with `s` in every field a client controls (and its own issue). */
function hostileEvent(s) {
  const frame = { function: s, module: s, filename: s, abs_path: s, lineno: 7, context_line: s, in_app: true, vars: { v: s } };
  return {
    event_id: newEventId(),
    timestamp: new Date().toISOString(),
    level: 'error',
    platform: s,
    logger: s,
    transaction: s,
    release: s,
    environment: s,
    server_name: s,
    message: s,
    fingerprint: [s],
    tags: { hostile: s, [s]: 'key' },
    user: { id: s, email: s, username: s },
    request: { url: s, method: s, headers: { 'X-Hostile': s } },
    exception: { values: [{ type: s, value: s, module: s, mechanism: { type: 'generic', handled: true, data: { k: s } }, stacktrace: { frames: [frame] } }] },
    breadcrumbs: { values: [{ timestamp: Date.now() / 1000, category: s, level: 'error', message: s }] },
    contexts: { domain: { name: s, tags: { t: s }, data: { d: s } }, hostile: { type: 'hostile', v: s } },
    extra: { hostile: s },
    sdk: { name: s, version: '1.0' },
  };
}

/** What the page built that a harmless page does not have. */
const injected = (page) => page.evaluate(() => ({
  xss: window.__xss,
  scripts: [...document.scripts].map((x) => x.getAttribute('src')),
  elements: document.querySelectorAll('main img, main iframe, main svg[onload], main script, #xss-link, [onerror], [onload], [srcdoc]').length,
  jsLinks: [...document.querySelectorAll('a[href]')].filter((a) => /^\s*javascript:/i.test(a.getAttribute('href'))).length,
}));

describe('hostile event strings in the dashboard', () => {
  let collector;
  let project;
  let browser;
  let ctx;
  let page;
  let seen;
  const sent = [];

  before(async () => {
    collector = await Collector.start();
    project = await collector.project(1);
    for (const s of HOSTILE) {
      const ev = hostileEvent(s);
      await send(collector, project, ev);
      const stored = await collector.api(`/api/0/projects/1/events/${ev.event_id}/`);
      sent.push({ s, ev, issueId: stored.issue_id });
    }
    browser = await launch();
    ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, bypassCSP: true });
    await loginByApi(ctx, collector.base);
    page = await ctx.newPage();
    seen = watch(page);
  });

  after(async () => {
    if (browser) await browser.close();
    if (collector) await collector.stop();
  });

  it('stores every string verbatim', async () => {
    for (const { s, ev } of sent) {
      const got = await collector.api(`/api/0/projects/1/events/${ev.event_id}/`);
      for (const key of Object.keys(ev)) {
        if (key === 'timestamp') continue;
        assert.deepEqual(got[key], ev[key], `${s}: field ${key}`);
      }
    }
  });

  it('shows each string as text on the issue page, in every place it is rendered', async () => {
    for (const { s, issueId } of sent) {
      await page.goto(`${collector.base}/issues/${issueId}`);
      await page.locator('.exc-type').first().waitFor();
      assert.equal(await page.locator('.exc-type').first().textContent(), s, 'exception type');
      assert.equal(await page.locator('.exc-value').first().textContent(), s, 'exception value');
      assert.ok((await page.locator('.frame-fn').allTextContents()).some((t) => t.includes(s)), `function name: ${s}`);
      assert.ok((await page.locator('.tag-v').allTextContents()).includes(s), `tag value: ${s}`);
      assert.ok((await page.locator('.tag-k').allTextContents()).includes(s), `tag key: ${s}`);
      assert.ok((await page.locator('.crumb-msg').allTextContents()).includes(s), `breadcrumb: ${s}`);
      assert.equal(await page.locator('.domain-name .mono').textContent(), s, 'domain name');
      const facts = await page.locator('table.kv td').allTextContents();
      for (const field of ['release', 'environment', 'server_name', 'platform']) {
        assert.ok(facts.includes(s), `${field} shown: ${s}`);
      }
      await page.locator('.raw-json summary').click();
      await page.locator('pre.raw', { hasText: '"event_id"' }).waitFor();
      assert.ok((await page.locator('pre.raw').textContent()).includes(JSON.stringify(s).slice(1, -1)), `raw JSON: ${s}`);
      const bad = await injected(page);
      assert.equal(bad.xss, undefined, `nothing ran: ${s}`);
      assert.equal(bad.elements, 0, `no element from ${s}`);
      assert.equal(bad.jsLinks, 0, `no javascript: link from ${s}`);
      assert.deepEqual(bad.scripts, ['/assets/boot.js', '/assets/app.js']);
    }
    await screenshot(page, 'security-issue-1280');
  });

  it('shows them as text in the class list and the issue list, and finds each by search', async () => {
    await page.goto(`${collector.base}/?status=all`);
    await page.locator('a.class-name').nth(HOSTILE.length - 1).waitFor();
    const classes = await page.locator('a.class-name').allTextContents();
    for (const s of HOSTILE) assert.ok(classes.includes(s), `class ${s} in ${JSON.stringify(classes)}`);

    await page.goto(`${collector.base}/issues?status=all`);
    await page.locator('a.issue-title').nth(HOSTILE.length - 1).waitFor();
    const titles = await page.locator('a.issue-title').allTextContents();
    for (const s of HOSTILE) assert.ok(titles.some((t) => t.includes(s)), `title with ${s} in ${JSON.stringify(titles)}`);
    const chips = await page.locator('a.class-chip').allTextContents();
    for (const s of HOSTILE) assert.ok(chips.includes(s), `class chip ${s}`);

    // Each string typed into the search box finds exactly its own issue.
    for (const { s, issueId } of sent) {
      const issue = await collector.api(`/api/0/issues/${issueId}/`);
      await page.fill('input[name=query]', s);
      await page.press('input[name=query]', 'Enter');
      await page.waitForFunction((title) => {
        const rows = [...document.querySelectorAll('a.issue-title')];
        return rows.length === 1 && rows[0].textContent === title;
      }, issue.title, { timeout: 10_000 });
    }
    const bad = await injected(page);
    assert.equal(bad.xss, undefined);
    assert.equal(bad.elements, 0);
    assert.equal(bad.jsLinks, 0);
    await screenshot(page, 'security-issues-1280');
  });

  it('opened no dialog and raised no error', () => {
    assert.deepEqual(seen.dialogs, [], 'no dialog opened');
    assert.deepEqual(seen.errors, [], 'no page error');
    assert.deepEqual(seen.console.filter((m) => !/favicon/.test(m)), [], 'nothing logged to the console');
    console.error(`reliability: scenario=security-dashboard strings=${HOSTILE.length} issues=${sent.length} dialogs=${seen.dialogs.length} page_errors=${seen.errors.length}`);
  });
});
