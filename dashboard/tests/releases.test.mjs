// The releases page against a real collector: session updates sent as the
// Node SDK sends them (single sessions) and as aggregates, shown as sessions,
// crash-free rate, adoption and new issues per release; the issue page names
// the releases it was seen in.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Collector } from './lib/collector.mjs';
import { send, uniqueEvent } from './lib/events.mjs';
import { launch, watch, loginByApi, screenshot } from './lib/browser.mjs';

const iso = (ms) => new Date(ms).toISOString();

/** One envelope of session items; resolves once the collector answered 200. */
async function sendSessions(collector, project, items) {
  const lines = [JSON.stringify({ dsn: project.dsn, sent_at: iso(Date.now()) })];
  for (const [type, payload] of items) {
    lines.push(JSON.stringify({ type }), JSON.stringify(payload));
  }
  const res = await fetch(`${collector.base}/api/${project.id}/envelope/`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-sentry-envelope', 'X-Sentry-Auth': `Sentry sentry_key=${project.key}, sentry_version=7` },
    body: `${lines.join('\n')}\n`,
  });
  assert.equal(res.status, 200, await res.text());
}

function session(sid, release, status) {
  const started = Date.now() - 3600e3;
  return ['session', {
    sid, did: `user-${sid}`, init: false, started: iso(started), timestamp: iso(Date.now()),
    status, errors: 0, attrs: { release, environment: 'production' },
  }];
}

describe('releases page', () => {
  let collector;
  let browser;
  let project;

  before(async () => {
    collector = await Collector.start();
    project = await collector.project(1);
    browser = await launch();
  });

  after(async () => {
    if (browser) await browser.close();
    if (collector) await collector.stop();
  });

  it('lists releases with sessions, crash-free rate, adoption and new issues', async () => {
    // shop@2.0: 4 sessions, one crashed; shop@1.9: 16 in aggregates, none crashed.
    await sendSessions(collector, project, [
      session('a1', 'shop@2.0', 'exited'), session('a2', 'shop@2.0', 'exited'),
      session('a3', 'shop@2.0', 'crashed'), session('a4', 'shop@2.0', 'exited'),
      ['sessions', { attrs: { release: 'shop@1.9', environment: 'production' },
        aggregates: [{ started: iso(Date.now() - 7200e3), exited: 15, errored: 1 }] }],
    ]);
    const ev = uniqueEvent('release-regression');
    ev.release = 'shop@2.0';
    ev.timestamp = Date.now() / 1000;
    const { id: eventId } = await send(collector, project, ev);
    // Tag values (the issue's releases) may lag their events by up to a second.
    const stored = await collector.api(`/api/0/projects/1/events/${eventId}/`);
    for (let i = 0; i < 50; i += 1) {
      const issue = await collector.api(`/api/0/issues/${stored.issue_id}/`);
      if (issue.releases.length) break;
      await new Promise((r) => setTimeout(r, 100));
    }

    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await ctx.newPage();
    const seen = watch(page);
    await loginByApi(ctx, collector.base);
    await page.goto(`${collector.base}/`);
    await page.getByRole('link', { name: 'Releases' }).click();
    await page.waitForURL(/\/releases$/);
    await page.locator('main h1', { hasText: 'Releases' }).waitFor();
    const two = page.locator('tr[data-release="shop@2.0"]');
    await two.waitFor();
    const cells = async (row) => (await row.locator('td').allInnerTexts()).map((t) => t.trim());
    const a = await cells(two);
    assert.equal(a[1], '4');
    assert.equal(a[2], '75.00%');
    assert.equal(a[3], '20.00%');
    assert.match(a[8], /^1 #\d+$/);
    const b = await cells(page.locator('tr[data-release="shop@1.9"]'));
    assert.equal(b[1], '16');
    assert.equal(b[2], '100%');
    assert.equal(b[3], '80.00%');
    assert.equal(b[6], '1');
    // The chart has a line per release.
    assert.equal(await page.locator('svg.lines polyline').count(), 2);
    await screenshot(page, 'releases');

    // The new issue's link leads to it, and it names its release.
    await two.locator('a.issue-link').click();
    await page.waitForURL(/\/issues\/\d+$/);
    const line = page.locator('.issue-releases');
    await line.waitFor();
    assert.match(await line.innerText(), /shop@2\.0 \(1\).*first seen in shop@2\.0/);
    assert.deepEqual(seen.errors, []);
    await ctx.close();
  });
});
