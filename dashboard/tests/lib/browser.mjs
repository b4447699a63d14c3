// Headless Debian chromium driven by playwright-core.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ADMIN_PASSWORD } from './collector.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
export const SCREENSHOTS = path.resolve(here, '../screenshots');

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_BIN || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync'],
  });
}

/** Records everything a page does that a harmless page does not: dialogs, errors, console output. */
export function watch(page) {
  const seen = { dialogs: [], errors: [], console: [], failed: [] };
  page.on('dialog', (d) => { seen.dialogs.push(d.message()); d.dismiss().catch(() => {}); });
  page.on('pageerror', (e) => seen.errors.push(e.message));
  page.on('console', (m) => seen.console.push(`${m.type()}: ${m.text()}`));
  page.on('requestfailed', (r) => seen.failed.push(`${r.method()} ${r.url()} ${r.failure()?.errorText}`));
  return seen;
}

/** Signs in through the API so the context holds the session cookie. */
export async function loginByApi(context, base) {
  const res = await context.request.post(`${base}/auth/login`, {
    data: { username: 'admin', password: ADMIN_PASSWORD },
    headers: { 'X-Errscope-Request': '1' },
  });
  if (res.status() !== 204) throw new Error(`login failed: HTTP ${res.status()} ${await res.text()}`);
}

export async function screenshot(page, name) {
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`), fullPage: true });
}
