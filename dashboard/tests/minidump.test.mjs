// Minidumps on the event page: a Windows dump from Breakpad's test data (see
// collector/tests/fixtures/minidumps/README.md) uploaded as Crashpad does, shown with its
// crash reason and a link that downloads the very bytes that were sent.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Collector } from './lib/collector.mjs';
import { launch, watch, loginByApi, screenshot } from './lib/browser.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const DUMP = path.resolve(here, '../../collector/tests/fixtures/minidumps/test.dmp');

describe('minidumps on the event page', () => {
  let collector;
  let browser;

  before(async () => {
    collector = await Collector.start();
    browser = await launch();
  });

  after(async () => {
    if (browser) await browser.close();
    if (collector) await collector.stop();
  });

  it('shows the crash and downloads the raw dump', async () => {
    const project = await collector.project(1);
    const dump = await readFile(DUMP);
    const form = new FormData();
    form.append('upload_file_minidump', new Blob([dump]), 'crash.dmp');
    form.append('sentry[release]', 'test_app@1.0');
    const res = await fetch(`${collector.base}/api/1/minidump/?sentry_key=${project.key}`, { method: 'POST', body: form });
    assert.equal(res.status, 200, await res.clone().text());
    const eventId = await res.text();
    const ev = await collector.api(`/api/0/projects/1/events/${eventId}/`);

    const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
    const page = await context.newPage();
    const seen = watch(page);
    await loginByApi(context, collector.base);
    await page.goto(`${collector.base}/issues/${ev.issue_id}`);
    await page.locator('.exc-type', { hasText: 'EXCEPTION_ACCESS_VIOLATION_WRITE' }).waitFor();
    const link = page.locator('a.minidump-download');
    assert.equal(await link.textContent(), 'Download minidump');
    const [download] = await Promise.all([page.waitForEvent('download'), link.click()]);
    assert.equal(download.suggestedFilename(), 'crash.dmp');
    const saved = await readFile(await download.path());
    assert.ok(saved.equals(dump), `downloaded ${saved.length} bytes, sent ${dump.length}`);
    await screenshot(page, 'minidump-event');
    assert.deepEqual(seen.errors, []);
    await context.close();
  });
});
