// The debug files page against a real collector: files uploaded with the real
// sentry-cli (an ELF debug companion and its source bundle) and with curl-style
// multipart, listed with their ids, size, arch and sources, and deleted.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Collector, ADMIN_TOKEN } from './lib/collector.mjs';
import { launch, watch, loginByApi, screenshot } from './lib/browser.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const SENTRY_CLI = process.env.SENTRY_CLI
  || path.resolve(here, '../../collector/tests/tools/node_modules/.bin/sentry-cli');

/** Two tiny C programs built with -g, their debug info split off with objcopy. */
function buildFixtures() {
  const dir = mkdtempSync(path.join(tmpdir(), 'errscope-difs-'));
  writeFileSync(path.join(dir, 'shop.c'), '#include <stdio.h>\nstatic int total(int n) { return n * PRICE; }\nint main(int argc, char **argv) { printf("%d\\n", total(argc)); return 0; }\n');
  for (const [name, price] of [['shop', 3], ['billing', 5]]) {
    const exe = path.join(dir, name);
    execFileSync('gcc', ['-g', '-O0', '-Wl,--build-id', `-DPRICE=${price}`, '-o', exe, path.join(dir, 'shop.c')]);
    execFileSync('objcopy', ['--only-keep-debug', exe, `${exe}.debug`]);
  }
  return dir;
}

describe('debug files page', () => {
  let collector;
  let browser;
  let dir;

  before(async () => {
    assert.ok(existsSync(SENTRY_CLI), `sentry-cli not found at ${SENTRY_CLI}: run scripts/setup`);
    dir = buildFixtures();
    collector = await Collector.start();
    browser = await launch();
  });

  after(async () => {
    if (browser) await browser.close();
    if (collector) await collector.stop();
  });

  it('lists uploaded files with ids, size, arch and sources, and deletes one', async () => {
    execFileSync(SENTRY_CLI, ['--url', collector.base, '--auth-token', ADMIN_TOKEN, 'debug-files', 'upload',
      '--org', 'errscope', '--project', 'default', '--include-sources', path.join(dir, 'shop.debug')],
    { env: { ...process.env, SENTRY_DISABLE_UPDATE_CHECK: 'true', HOME: dir }, stdio: 'pipe' });
    const form = new FormData();
    form.append('file', new Blob([readFileSync(path.join(dir, 'billing.debug'))]), 'billing.debug');
    const res = await fetch(`${collector.base}/api/0/projects/errscope/default/files/dsyms/`, {
      method: 'POST', headers: { Authorization: `Bearer ${ADMIN_TOKEN}` }, body: form,
    });
    assert.equal(res.status, 201, await res.clone().text());
    const files = await collector.api('/api/0/projects/errscope/1/files/dsyms/');
    assert.equal(files.length, 3, JSON.stringify(files));
    const shop = files.find((f) => f.objectName === 'shop.debug' && f.kind === 'elf');
    const billing = files.find((f) => f.objectName === 'billing.debug');

    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, bypassCSP: true });
    const page = await ctx.newPage();
    const seen = watch(page);
    await loginByApi(ctx, collector.base);
    await page.goto(`${collector.base}/`);
    await page.getByRole('link', { name: 'Debug files' }).click();
    await page.waitForURL(/\/debug-files$/);
    await page.locator('main h1', { hasText: 'Debug files' }).waitFor();
    const rows = page.locator('table.difs-table tbody tr');
    await assert.doesNotReject(rows.nth(2).waitFor());
    assert.equal(await rows.count(), 3);
    const shopRow = page.locator(`tr[data-dif="${shop.id}"]`);
    const text = await shopRow.innerText();
    assert.match(text, /shop\.debug/);
    assert.ok(text.includes(shop.debugId), text);
    assert.ok(text.includes(shop.codeId), text);
    assert.match(text, /x86_64/);
    assert.match(text, /debug/);
    assert.match(text, new RegExp(`${(shop.size / 1024).toFixed(1)} KB`));
    assert.match(text, /never/, 'not used yet');
    const bundleRow = page.locator('tr', { hasText: 'sourcebundle' });
    assert.match(await bundleRow.innerText(), /yes/, 'the source bundle has sources');
    assert.match(await shopRow.locator('td').nth(4).innerText(), /^no$/);
    await page.getByText('sentry-cli --url').first().waitFor();
    await screenshot(page, 'debug-files');

    // axe-core on the page (the CSP rightly refuses the injected checker; bypassed here).
    await page.addScriptTag({ path: createRequire(import.meta.url).resolve('axe-core/axe.min.js') });
    const violations = await page.evaluate(async () => {
      const r = await window.axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa'] } });
      return r.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical').map((v) => v.id);
    });
    assert.deepEqual(violations, []);

    // Delete: the first click arms the button, the second deletes.
    const del = page.getByRole('button', { name: 'Delete billing.debug' });
    await del.click();
    await assert.doesNotReject(page.getByRole('button', { name: 'Delete billing.debug' }).filter({ hasText: 'Confirm delete' }).waitFor());
    await del.click();
    await page.locator(`tr[data-dif="${billing.id}"]`).waitFor({ state: 'detached' });
    assert.equal(await rows.count(), 2);
    const after = await collector.api('/api/0/projects/errscope/1/files/dsyms/');
    assert.deepEqual(after.map((f) => f.id).sort(), files.filter((f) => f.id !== billing.id).map((f) => f.id).sort());
    assert.deepEqual(seen.errors, []);
    assert.deepEqual(seen.dialogs, []);
    await ctx.close();
  });
});
