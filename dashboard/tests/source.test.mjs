// Source context: a real event from Python's sentry-sdk (installed by scripts/setup),
// through the real collector, shown in headless Chromium with the lines around the
// failing line and that line highlighted, every line as text.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Collector } from './lib/collector.mjs';
import { launch, watch, loginByApi, screenshot } from './lib/browser.mjs';

// Line 12 raises; the SDK sends five lines before and after it. Line 9 would set
// window.__xss if the page ever parsed a source line as HTML.
const SCRIPT = [
  'import sys',
  'import sentry_sdk',
  '',
  'sentry_sdk.init(dsn=sys.argv[1], default_integrations=False)',
  '',
  '',
  'def total(cart):',
  '    prices = {"apple": 3}',
  '    # <img src=x onerror="window.__xss = 1"> is only text',
  '    subtotal = 0',
  '    for item in cart:',
  '        subtotal += prices[item]  # KeyError for unknown items',
  '    return subtotal',
  '',
  '',
  'try:',
  '    total(["apple", "pear"])',
  'except KeyError:',
  '    sentry_sdk.capture_exception()',
  'sentry_sdk.flush(10)',
  '',
].join('\n');
const RAISING_LINE = 12;

describe('source context of frames', () => {
  let collector;
  let browser;
  let dir;

  before(async () => {
    collector = await Collector.start();
    browser = await launch();
    dir = await mkdtemp(path.join(tmpdir(), 'errscope-source-'));
  });

  after(async () => {
    if (browser) await browser.close();
    if (collector) await collector.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('shows the lines around a Python frame with the failing line highlighted', async () => {
    const project = await collector.project(1);
    const dsn = `http://${project.key}@${new URL(collector.base).host}/1`;
    const file = path.join(dir, 'checkout.py');
    await writeFile(file, SCRIPT);
    // The working directory is the project root, so sentry-sdk marks the script's frames in-app.
    execFileSync('python3', [file, dsn], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });

    const issues = await collector.api('/api/0/projects/1/issues/');
    assert.equal(issues.data.length, 1, JSON.stringify(issues));
    const issue = issues.data[0];
    assert.equal(issue.class, 'KeyError');
    // What the SDK really sent for the raising frame.
    const detail = await collector.api(`/api/0/issues/${issue.id}/`);
    const ev = await collector.api(`/api/0/projects/1/events/${detail.latest_event_id}/`);
    const frames = ev.exception.values[0].stacktrace.frames;
    const top = frames[frames.length - 1];
    const lines = SCRIPT.split('\n');
    assert.equal(top.function, 'total');
    assert.equal(top.lineno, RAISING_LINE);
    assert.equal(top.context_line, lines[RAISING_LINE - 1]);
    assert.deepEqual(top.pre_context, lines.slice(RAISING_LINE - 6, RAISING_LINE - 1));
    assert.deepEqual(top.post_context, lines.slice(RAISING_LINE, RAISING_LINE + 5));

    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    const seen = watch(page);
    await loginByApi(context, collector.base);
    await page.goto(`${collector.base}/issues/${issue.id}`);
    const frame = page.locator('li.frame', { has: page.locator('.frame-fn', { hasText: /^total$/ }) });
    const src = frame.locator('details.frame-src[open] ol.src');
    await src.waitFor();
    assert.equal(await src.getAttribute('aria-label'), `Source around line ${RAISING_LINE}`);
    const shown = await src.locator('li.src-line').evaluateAll((rows) => rows.map((r) => ({
      no: r.querySelector('.src-no').textContent,
      code: r.querySelector('.src-code').textContent,
      current: r.classList.contains('src-current'),
    })));
    const want = [];
    for (let n = RAISING_LINE - 5; n <= RAISING_LINE + 5; n++) {
      want.push({ no: String(n), code: lines[n - 1], current: n === RAISING_LINE });
    }
    assert.deepEqual(shown, want);
    // The highlighted line is the raising one, and it looks different from its neighbours.
    const current = src.locator('li.src-current');
    assert.equal(await current.count(), 1);
    assert.equal(await current.getAttribute('aria-current'), 'true');
    assert.equal(await current.locator('.src-code').textContent(), '        subtotal += prices[item]  # KeyError for unknown items');
    const style = (loc) => loc.evaluate((el) => {
      const cs = getComputedStyle(el);
      return `${cs.backgroundColor} ${getComputedStyle(el.querySelector('.src-code')).fontWeight}`;
    });
    assert.notEqual(await style(current), await style(src.locator('li.src-line').first()));
    assert.ok(await current.isVisible());
    // Whitespace is kept: the code column is preformatted.
    assert.equal(await current.locator('.src-code').evaluate((el) => getComputedStyle(el.parentElement).whiteSpace), 'pre');
    // The source line that looks like markup stayed text.
    assert.equal(await src.locator('img').count(), 0);
    assert.equal(await page.evaluate(() => window.__xss), undefined);
    // The caller's frame has its source too, folded behind its own toggle.
    const caller = page.locator('li.frame', { has: page.locator('.frame-fn', { hasText: /^<module>$/ }) });
    const callerSrc = caller.locator('details.frame-src');
    assert.equal(await callerSrc.evaluate((d) => d.open), false);
    await callerSrc.locator('summary').click();
    assert.equal(await caller.locator('li.src-current .src-code').textContent(), '    total(["apple", "pear"])');
    await screenshot(page, 'source-context');

    // WCAG A/AA on the page with source shown, light and dark.
    const axePath = createRequire(import.meta.url).resolve('axe-core/axe.min.js');
    const problems = [];
    for (const colorScheme of ['light', 'dark']) {
      const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, colorScheme, bypassCSP: true });
      await loginByApi(ctx, collector.base);
      const p = await ctx.newPage();
      await p.goto(`${collector.base}/issues/${issue.id}`);
      await p.locator('ol.src').first().waitFor();
      await p.addScriptTag({ path: axePath });
      const violations = await p.evaluate(async () => {
        const r = await window.axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } });
        return r.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical')
          .map((v) => `${v.id} (${v.impact}): ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')}`);
      });
      for (const v of violations) problems.push(`${colorScheme}: ${v}`);
      await ctx.close();
    }
    assert.deepEqual(problems, []);
    assert.deepEqual(seen.errors, []);
    assert.deepEqual(seen.dialogs, []);
    await context.close();
  });
});
