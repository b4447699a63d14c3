// Teams in the browser against a real collector: an invited member sets a password
// and sees only her project; she assigns an issue to herself and finds it under
// "Assigned to me"; a comment with HTML and Markdown is shown as text; a viewer has
// no resolve, assign or comment controls and the API refuses the resolve; owners
// manage users, read the audit log, and everyone makes and revokes tokens.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Collector } from './lib/collector.mjs';
import { send, uniqueEvent } from './lib/events.mjs';
import { launch, watch, loginByApi, screenshot } from './lib/browser.mjs';

async function issueOf(collector, pid, title) {
  const res = await collector.api(`/api/0/projects/${pid}/issues/?status=all`);
  const i = res.data.find((x) => x.title.includes(title));
  if (!i) throw new Error(`no issue "${title}" in ${JSON.stringify(res.data.map((x) => x.title))}`);
  return i.id;
}

/** An invited user whose invite was accepted through the API: resolves with the password. */
async function userWithPassword(collector, username, role, projects) {
  const { invite } = await collector.api('/api/0/users/', { method: 'POST', body: { username, role, projects } });
  const res = await fetch(`${collector.base}/auth/invite/`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ token: invite.token, password: `${username}-password` }),
  });
  assert.equal(res.status, 204);
  return `${username}-password`;
}

async function loginAs(context, base, username, password) {
  const res = await context.request.post(`${base}/auth/login`, { data: { username, password } });
  assert.equal(res.status(), 204, await res.text());
}

describe('teams and access', () => {
  let collector;
  let browser;
  let other;
  const ids = {};

  before(async () => {
    collector = await Collector.start();
    const p1 = await collector.project(1);
    other = await collector.api('/api/0/projects/', { method: 'POST', body: { name: 'billing' } });
    const p2 = await collector.project(other.id);
    await send(collector, p1, [uniqueEvent('sync_orders'), uniqueEvent('send_mail')]);
    await send(collector, p2, [uniqueEvent('charge_card')]);
    ids.mine = await issueOf(collector, 1, 'sync_orders');
    ids.unassigned = await issueOf(collector, 1, 'send_mail');
    ids.other = await issueOf(collector, other.id, 'charge_card');
    browser = await launch();
  });

  after(async () => {
    if (browser) await browser.close();
    if (collector) await collector.stop();
  });

  it('an invited member sets a password, signs in and sees only her project', async () => {
    const { invite } = await collector.api('/api/0/users/', {
      method: 'POST', body: { username: 'mia', display_name: 'Mia Chen', role: 'member', projects: [1] },
    });
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    const seen = watch(page);
    await page.goto(invite.url);
    await page.getByRole('heading', { name: 'Welcome to errscope' }).waitFor();
    assert.equal(await page.locator('.invite-username').textContent(), 'mia');
    assert.equal(await page.locator('.invite-role').textContent(), 'member');
    await page.getByLabel('New password (at least 8 characters)').fill('mias-password');
    await page.getByLabel('The same password again').fill('mias-passwort');
    await page.getByRole('button', { name: 'Set password and sign in' }).click();
    await page.locator('.form-error', { hasText: 'The two passwords differ.' }).waitFor();
    await page.getByLabel('The same password again').fill('mias-password');
    await page.getByRole('button', { name: 'Set password and sign in' }).click();
    await page.waitForURL(`${collector.base}/`);
    const who = page.locator('.user-slot .user');
    await who.waitFor();
    assert.match(await who.textContent(), /Mia Chen\s*member/);
    // Her project only: no switcher, no owner pages.
    assert.equal(await page.locator('.project-select').count(), 0);
    assert.equal(await page.locator('.project-name').textContent(), 'default');
    assert.equal(await page.locator('nav a', { hasText: 'Users' }).count(), 0);
    assert.equal(await page.locator('nav a', { hasText: 'Audit log' }).count(), 0);
    const projects = await page.evaluate(async () => (await (await fetch('/api/0/projects/')).json()).map((p) => p.name));
    assert.deepEqual(projects, ['default']);
    // Another project's issue, by its URL: not found.
    await page.goto(`${collector.base}/issues/${ids.other}`);
    await page.getByRole('heading', { name: `Issue #${ids.other} does not exist` }).waitFor();
    // The password works for a fresh sign-in too.
    const again = await browser.newContext();
    await loginAs(again, collector.base, 'mia', 'mias-password');
    await again.close();
    assert.deepEqual(seen.errors, []);
    await context.close();
  });

  it('a member assigns an issue to herself, finds it under "Assigned to me" and comments safely', async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    await loginAs(context, collector.base, 'mia', 'mias-password');
    const page = await context.newPage();
    const seen = watch(page);
    await page.goto(`${collector.base}/issues/${ids.mine}`);
    const select = page.getByLabel('Assigned to');
    await select.waitFor();
    assert.equal(await select.inputValue(), '');
    await select.selectOption({ label: 'Mia Chen (mia) — me' });
    await page.locator('#toast', { hasText: 'Assigned to Mia Chen (mia).' }).waitFor();
    const stored = await collector.api(`/api/0/issues/${ids.mine}/`);
    assert.equal(stored.assignee.username, 'mia');

    await page.goto(`${collector.base}/issues`);
    await page.locator(`tr[data-issue-id="${ids.unassigned}"]`).waitFor();
    await page.getByLabel('Assigned to me').check();
    await page.waitForURL(/assigned=me/);
    await page.locator(`tr[data-issue-id="${ids.unassigned}"]`).waitFor({ state: 'detached' });
    const rows = await page.locator('tr.issue-row').evaluateAll((trs) => trs.map((tr) => Number(tr.dataset.issueId)));
    assert.deepEqual(rows, [ids.mine]);
    assert.match(await page.locator('tr.issue-row .assignee-chip').textContent(), /Mia Chen/);

    await page.locator('a.issue-title').click();
    const box = page.getByLabel('Add a comment');
    await box.waitFor();
    const text = 'Seen in prod <img src=x onerror=alert(1)> and **bold**\nsecond line';
    await box.fill(text);
    await page.getByRole('button', { name: 'Comment' }).click();
    const comment = page.locator('.comment');
    await comment.waitFor();
    const check = async () => {
      assert.equal(await page.locator('.comments-card img').count(), 0, 'no element made from the comment');
      assert.equal(await comment.locator('strong', { hasText: 'bold' }).count(), 1);
      assert.match(await comment.locator('.md').textContent(), /Seen in prod <img src=x onerror=alert\(1\)> and bold/);
      assert.equal(await comment.locator('.md br').count(), 1);
      assert.match(await comment.locator('.comment-head').textContent(), /Mia Chen \(mia\)/);
    };
    await check();
    await page.reload();
    await comment.waitFor();
    await check();
    await screenshot(page, 'teams-issue-member');
    assert.deepEqual(seen.dialogs, []);
    assert.deepEqual(seen.errors, []);
    await context.close();
  });

  it('a viewer sees no resolve, assign or comment controls, and the API refuses the resolve', async () => {
    const pw = await userWithPassword(collector, 'vic', 'viewer', [1]);
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    await loginAs(context, collector.base, 'vic', pw);
    const page = await context.newPage();
    await page.goto(`${collector.base}/issues/${ids.mine}`);
    await page.locator('.comment').waitFor();
    assert.match(await page.locator('.user-slot .user').textContent(), /vic\s*viewer/);
    assert.equal(await page.getByRole('button', { name: 'Resolve' }).count(), 0);
    assert.equal(await page.getByRole('button', { name: 'Mute' }).count(), 0);
    assert.equal(await page.locator('select#assignee').count(), 0);
    assert.match(await page.locator('.assignee-name').textContent(), /Mia Chen/);
    assert.equal(await page.locator('textarea').count(), 0);
    assert.equal(await page.getByRole('button', { name: /Delete/ }).count(), 0);
    const res = await context.request.put(`${collector.base}/api/0/issues/${ids.mine}/`, {
      data: { status: 'resolved' }, headers: { 'X-Errscope-Request': '1' },
    });
    assert.equal(res.status(), 403);
    assert.match((await res.json()).detail, /project:write/);
    assert.equal((await collector.api(`/api/0/issues/${ids.mine}/`)).status, 'unresolved');
    await context.close();
  });

  it('an owner invites, changes a role, reads the audit log; a user makes and revokes a token', async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    await loginByApi(context, collector.base);
    const page = await context.newPage();
    const seen = watch(page);
    await page.goto(`${collector.base}/users`);
    await page.getByRole('heading', { name: 'Users', level: 1 }).waitFor();
    await page.locator('tr[data-username="mia"]').waitFor();
    await page.getByLabel('Username', { exact: true }).fill('nia');
    await page.getByLabel('Role', { exact: true }).selectOption('viewer');
    await page.getByRole('button', { name: 'Create invite' }).click();
    const link = page.locator('.invite-url');
    await link.waitFor();
    assert.match(await link.textContent(), new RegExp(`^${collector.base}/invite/[0-9a-f]{64}$`));
    const nia = page.locator('tr[data-username="nia"]');
    await nia.waitFor();
    assert.match(await nia.textContent(), /invited/);
    await nia.getByLabel('Role of nia').selectOption('member');
    await page.locator('#toast', { hasText: 'nia: role member.' }).waitFor();
    const users = await collector.api('/api/0/users/');
    assert.equal(users.find((u) => u.username === 'nia').role, 'member');

    await page.goto(`${collector.base}/audit`);
    await page.locator('tr[data-action="comment.create"]').first().waitFor();
    assert.match(await page.locator('tr[data-action="issue.assign"]').first().textContent(), /mia.*to mia/);

    await page.goto(`${collector.base}/settings`);
    await page.getByRole('heading', { name: 'Your account' }).waitFor();
    await page.getByLabel('Name', { exact: true }).fill('ci uploads');
    await page.getByRole('button', { name: 'Create token' }).click();
    const secret = page.locator('.token-secret');
    await secret.waitFor();
    const token = await secret.textContent();
    assert.match(token, /^esc_[0-9a-f]{64}$/);
    const ok = await fetch(`${collector.base}/api/0/projects/`, { headers: { Authorization: `Bearer ${token}` } });
    assert.equal(ok.status, 200);
    await page.getByRole('button', { name: 'Revoke token ci uploads' }).click();
    await page.locator('#toast', { hasText: 'revoked' }).waitFor();
    const gone = await fetch(`${collector.base}/api/0/projects/`, { headers: { Authorization: `Bearer ${token}` } });
    assert.equal(gone.status, 401);
    assert.ok(await page.locator('tr[data-session-id]').count() >= 1);
    await screenshot(page, 'teams-settings');
    assert.deepEqual(seen.errors, []);
    await context.close();
  });
});
