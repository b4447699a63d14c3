// The issue list with 10,000 issues: time from navigation start to the first
// rows on screen, measured in the browser (performance mark set by the page
// when it renders rows). Prints the figures recorded in BENCHMARKS.md.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Collector } from './lib/collector.mjs';
import { send, uniqueEvent } from './lib/events.mjs';
import { launch, loginByApi, screenshot } from './lib/browser.mjs';

const ISSUES = Number(process.env.ERRSCOPE_PERF_ISSUES || 10_000);
const BATCH = 250;
const LOADS = 15;

const median = (xs) => { const s = xs.slice().sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };
const fmt = (xs) => `median ${median(xs).toFixed(0)} ms, min ${Math.min(...xs).toFixed(0)}, max ${Math.max(...xs).toFixed(0)} (${xs.length} runs)`;

describe(`issue list with ${ISSUES} issues`, () => {
  let collector;
  let project;
  let browser;

  before(async () => {
    collector = await Collector.start();
    project = await collector.project(1);
    const t0 = performance.now();
    const hourAgo = Date.now() - 3600e3;
    for (let i = 0; i < ISSUES; i += BATCH) {
      const events = [];
      for (let j = i; j < Math.min(ISSUES, i + BATCH); j++) {
        events.push(uniqueEvent(`bulk_${j}`, {
          ts: hourAgo + j * 300,
          level: j % 10 === 0 ? 'warning' : 'error',
          environment: j % 3 ? 'production' : 'staging',
        }));
      }
      await send(collector, project, events, { gzip: true });
    }
    const secs = (performance.now() - t0) / 1000;
    console.log(`ingested ${ISSUES} events (${ISSUES} issues) in ${secs.toFixed(1)} s`);
    browser = await launch();
  });

  after(async () => {
    if (browser) await browser.close();
    if (collector) await collector.stop();
  });

  it('loads the first page fast and pages through with the cursor', async () => {
    const stats = await collector.api('/api/0/projects/1/stats/');
    assert.equal(stats.issues, ISSUES);

    // The API alone, for comparison.
    const apiTimes = [];
    for (let i = 0; i < LOADS; i++) {
      const t = performance.now();
      const r = await collector.api('/api/0/projects/1/issues/?limit=50');
      apiTimes.push(performance.now() - t);
      assert.equal(r.data.length, 50);
    }

    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    await loginByApi(ctx, collector.base);
    const page = await ctx.newPage();
    await page.goto(`${collector.base}/issues`); // warm the HTTP cache and the collector
    await page.locator('tr.issue-row').first().waitFor();

    const loads = [];
    for (let i = 0; i < LOADS; i++) {
      await page.goto(`${collector.base}/issues`);
      await page.locator('tr.issue-row').nth(49).waitFor();
      await page.waitForFunction(() => performance.getEntriesByName('errscope:first-rows').length === 1);
      loads.push(await page.evaluate(() => performance.getEntriesByName('errscope:first-rows')[0].startTime));
    }
    assert.equal(await page.locator('tr.issue-row').count(), 50);
    await screenshot(page, 'perf-issues-1280-light');

    // Next page, ten times: new rows each time, none repeated.
    const seen = new Set(await page.locator('tr.issue-row').evaluateAll((rows) => rows.map((r) => r.dataset.issueId)));
    const pageTimes = [];
    for (let i = 0; i < 10; i++) {
      const marks = await page.evaluate(() => performance.getEntriesByName('errscope:rows').length);
      await page.evaluate(() => {
        document.addEventListener('click', () => { window.__clickAt = performance.now(); }, { capture: true, once: true });
      });
      await page.getByRole('link', { name: 'Next →' }).click();
      await page.waitForFunction((n) => performance.getEntriesByName('errscope:rows').length > n, marks);
      // From the click to the frame that paints the new rows.
      pageTimes.push(await page.evaluate(() => performance.getEntriesByName('errscope:rows').at(-1).startTime - window.__clickAt));
      const ids = await page.locator('tr.issue-row').evaluateAll((rows) => rows.map((r) => r.dataset.issueId));
      assert.equal(ids.length, 50);
      for (const id of ids) { assert.ok(!seen.has(id), `issue ${id} shown twice`); seen.add(id); }
    }
    assert.match(await page.locator('.pager-info').textContent(), /^501–550$/);

    // A filter and a search over all of them.
    const filterTimes = [];
    for (const url of ['/issues?sort=count', '/issues?environment=staging', '/issues?query=bulk_9999', '/issues?level=warning&sort=first_seen']) {
      await page.goto(collector.base + url);
      await page.locator('tr.issue-row').first().waitFor();
      await page.waitForFunction(() => performance.getEntriesByName('errscope:first-rows').length === 1);
      filterTimes.push(await page.evaluate(() => performance.getEntriesByName('errscope:first-rows')[0].startTime));
    }
    assert.equal(await page.locator('tr.issue-row').count(), 50);
    await page.goto(`${collector.base}/issues?query=bulk_9999`);
    await page.locator('tr.issue-row').first().waitFor();
    assert.equal(await page.locator('tr.issue-row').count(), 1);

    console.log(`BENCH dashboard issue list, ${ISSUES} issues, navigation start to first 50 rows: ${fmt(loads)}`);
    console.log(`BENCH dashboard next page (click to new rows): ${fmt(pageTimes)}`);
    console.log(`BENCH dashboard filtered/sorted loads (sort=count, environment, query, level+first_seen): ${filterTimes.map((x) => x.toFixed(0)).join(', ')} ms`);
    console.log(`BENCH collector GET issues/?limit=50 alone: ${fmt(apiTimes)}`);
    await ctx.close();
  });
});
