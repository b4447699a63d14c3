// The alerts page against a real collector: create (a refused URL first), test,
// see the delivery log, edit and delete a rule, with a real HTTP receiver.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createRequire } from 'node:module';
import { Collector } from './lib/collector.mjs';
import { send, uniqueEvent } from './lib/events.mjs';
import { launch, watch, loginByApi, screenshot } from './lib/browser.mjs';

/** An HTTP server on 127.0.0.1:0 that answers 200 and keeps every JSON body. */
function receiver() {
  const got = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      got.push({ path: req.url, headers: req.headers, body: JSON.parse(body || 'null') });
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      res.end('ok');
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    got, server, base: `http://127.0.0.1:${server.address().port}`,
  })));
}

async function until(what, fn, ms = 10_000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('alerts page', () => {
  let collector;
  let project;
  let browser;
  let page;
  let seen;
  let recv;

  before(async () => {
    collector = await Collector.start();
    project = await collector.project(1);
    recv = await receiver();
    browser = await launch();
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    await loginByApi(context, collector.base);
    page = await context.newPage();
    seen = watch(page);
  });

  after(async () => {
    if (browser) await browser.close();
    if (recv) recv.server.close();
    if (collector) await collector.stop();
  });

  it('creates a rule, refusing a webhook that points at the collector itself', async () => {
    await page.goto(`${collector.base}/alerts`);
    await page.getByRole('heading', { name: 'Alerts', level: 1 }).waitFor();
    await page.getByText('No alert rules yet.').waitFor();
    assert.equal(await page.locator('nav a[aria-current=page]').textContent(), 'Alerts');
    await page.getByRole('button', { name: 'New rule' }).click();
    await page.fill('#alert-name', 'New errors to the hook');
    await page.selectOption('#alert-level', 'error');
    await page.fill('#alert-url', `${collector.base}/api/1/store/`);
    await page.fill('#alert-secret', 'hook-secret');
    await page.getByRole('button', { name: 'Create rule' }).click();
    await page.locator('.form-error', { hasText: 'points at this collector itself' }).waitFor();
    await page.fill('#alert-url', `${recv.base}/hook`);
    await page.getByRole('button', { name: 'Create rule' }).click();
    const card = page.locator('.alert-card', { hasText: 'New errors to the hook' });
    await card.waitFor();
    assert.match(await card.textContent(), /A new issue appears, when level ≥ error/);
    assert.match(await card.textContent(), /\(signed\)/);
    const rules = await collector.api('/api/0/projects/1/alerts/');
    assert.equal(rules.length, 1);
    assert.deepEqual(rules[0].filter, { level: 'error', environment: null, release: null, class: null, kind: null });
  });

  it('sends a test message and shows it, then a real alert, in the delivery log', async () => {
    const card = page.locator('.alert-card').first();
    await card.getByRole('button', { name: 'Send test' }).click();
    await page.getByText('Test message delivered.').waitFor();
    await card.locator('.deliveries tbody tr').first().waitFor();
    assert.match(await card.locator('.deliveries tbody tr').first().textContent(), /test\s*sent/);
    assert.equal(recv.got.length, 1);
    assert.equal(recv.got[0].body.action, 'test');
    assert.match(recv.got[0].headers['x-errscope-signature'], /^sha256=[0-9a-f]{64}$/);

    await send(collector, project, uniqueEvent('alerted'));
    await until('the new-issue webhook', () => recv.got.length === 2);
    assert.equal(recv.got[1].body.trigger, 'new_issue');
    assert.match(recv.got[1].body.issue.url, new RegExp(`^${collector.base}/issues/\\d+$`));
    await card.getByRole('button', { name: 'Refresh log' }).click();
    await until('two log rows', async () => (await card.locator('.deliveries tbody tr').count()) === 2);
    assert.match(await card.locator('.deliveries tbody tr').first().textContent(), /new issue\s*sent/);
    await screenshot(page, 'alerts-1280-light');
  });

  it('passes axe-core\'s WCAG 2 A/AA checks', async () => {
    const axePath = createRequire(import.meta.url).resolve('axe-core/axe.min.js');
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, bypassCSP: true });
    await loginByApi(ctx, collector.base);
    const p = await ctx.newPage();
    await p.goto(`${collector.base}/alerts`);
    await p.locator('.alert-card').first().waitFor();
    await p.getByRole('button', { name: 'New rule' }).click();
    await p.addScriptTag({ path: axePath });
    const violations = await p.evaluate(async () => {
      const r = await window.axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } });
      return r.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical')
        .map((v) => `${v.id}: ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')}`);
    });
    await ctx.close();
    assert.deepEqual(violations, []);
  });

  it('edits the rule into a frequency rule, keeping its secret, and deletes it', async () => {
    const card = page.locator('.alert-card').first();
    await card.getByRole('button', { name: 'Edit' }).click();
    await page.fill('#alert-name', 'Storms');
    await page.selectOption('#alert-trigger', 'frequency');
    await page.fill('#alert-count', '5');
    await page.fill('#alert-minutes', '2');
    await page.getByRole('button', { name: 'Save rule' }).click();
    const edited = page.locator('.alert-card', { hasText: 'Storms' });
    await edited.waitFor();
    assert.match(await edited.textContent(), /More than 5 events in 2 min/);
    const [rule] = await collector.api('/api/0/projects/1/alerts/');
    assert.equal(rule.channel.has_secret, true, 'editing without typing the secret keeps it');
    await edited.getByRole('button', { name: 'Delete' }).click();
    await edited.getByRole('button', { name: 'Really delete?' }).click();
    await page.getByText('No alert rules yet.').waitFor();
    assert.deepEqual(await collector.api('/api/0/projects/1/alerts/'), []);
    assert.deepEqual(seen.errors, []);
  });
});
