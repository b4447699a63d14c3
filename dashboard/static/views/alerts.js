// Alerts: the current project's rules (create, edit, test, delete) and each
// rule's delivery log.
import { h, replace } from '../dom.js';
import { api } from '../api.js';
import { project, toast, timeAgo, errorBox, emptyState } from '../shell.js';

const TRIGGERS = {
  new_issue: 'A new issue appears',
  regression: 'A resolved issue happens again',
  frequency: 'An issue happens more than N times in M minutes',
  unmute: 'A muted issue is unmuted',
};
const LEVELS = ['', 'debug', 'info', 'warning', 'error', 'fatal'];

function describe(rule) {
  const t = rule.trigger === 'frequency'
    ? `More than ${rule.count} events in ${rule.minutes} min`
    : TRIGGERS[rule.trigger] || rule.trigger;
  const f = Object.entries(rule.filter || {}).filter(([, v]) => v)
    .map(([k, v]) => (k === 'level' ? `level ≥ ${v}` : `${k} = ${v}`));
  return f.length ? `${t}, when ${f.join(', ')}` : t;
}

function channelText(c) {
  if (c.type === 'email') return `Email to ${c.to.join(', ')}`;
  if (c.type === 'slack') return `Slack-compatible webhook ${c.url}`;
  return `Webhook ${c.url}${c.has_secret ? ' (signed)' : ''}`;
}

function field(id, label, input, hint) {
  return h('div', { class: 'alert-field' },
    h('label', { for: id }, label), input,
    hint ? h('span', { class: 'muted small' }, hint) : null);
}

/** The create/edit form; `rule` is null for a new rule. */
function ruleForm(rule, onSaved, onCancel) {
  const r = rule || { trigger: 'new_issue', filter: {}, interval_minutes: 30, channel: { type: 'webhook', url: '' }, enabled: true };
  const input = (id, value, attrs = {}) => h('input', { id, name: id, value: value ?? '', autocomplete: 'off', ...attrs });
  const select = (id, options, value) => h('select', { id, name: id },
    options.map(([v, text]) => h('option', { value: v, selected: v === (value ?? '') }, text)));
  const name = input('alert-name', r.name, { required: true, maxlength: 200, placeholder: 'New errors to #oncall' });
  const trigger = select('alert-trigger', Object.entries(TRIGGERS), r.trigger);
  const count = input('alert-count', r.count ?? 100, { type: 'number', min: 1 });
  const minutes = input('alert-minutes', r.minutes ?? 5, { type: 'number', min: 1 });
  const freq = h('div', { class: 'alert-row' },
    field('alert-count', 'More than (events)', count), field('alert-minutes', 'Within (minutes)', minutes));
  const level = select('alert-level', LEVELS.map((l) => [l, l ? `${l} or higher` : 'any level']), r.filter.level);
  const env = input('alert-environment', r.filter.environment, { placeholder: 'any' });
  const release = input('alert-release', r.filter.release, { placeholder: 'any' });
  const klass = input('alert-class', r.filter.class, { placeholder: 'any' });
  const kind = select('alert-kind', [['', 'any kind'], ['programmer', 'programmer'], ['operational', 'operational']], r.filter.kind);
  const interval = input('alert-interval', r.interval_minutes, { type: 'number', min: 0 });
  const ctype = select('alert-channel', [['webhook', 'Webhook (JSON)'], ['slack', 'Slack-compatible webhook'], ['email', 'Email']], r.channel.type);
  const url = input('alert-url', r.channel.url, { type: 'url', placeholder: 'https://hooks.example.com/errscope' });
  const secret = input('alert-secret', '', {
    type: 'password',
    placeholder: r.channel.has_secret ? 'unchanged (a secret is set)' : 'optional: signs each body (HMAC-SHA256)',
  });
  const to = input('alert-to', (r.channel.to || []).join(', '), { placeholder: 'oncall@example.com, dev@example.com' });
  const enabled = h('input', { id: 'alert-enabled', type: 'checkbox', checked: r.enabled });
  const urlField = field('alert-url', 'URL', url);
  const secretField = field('alert-secret', 'Secret', secret);
  const toField = field('alert-to', 'Recipients', to, 'Comma-separated');
  const error = h('p', { class: 'form-error', role: 'alert' });
  const save = h('button', { type: 'submit', class: 'btn btn-primary' }, rule ? 'Save rule' : 'Create rule');
  const cancel = h('button', { type: 'button', class: 'btn' }, 'Cancel');
  cancel.addEventListener('click', onCancel);

  function sync() {
    freq.hidden = trigger.value !== 'frequency';
    const email = ctype.value === 'email';
    urlField.hidden = email;
    toField.hidden = !email;
    secretField.hidden = ctype.value !== 'webhook';
  }
  trigger.addEventListener('change', sync);
  ctype.addEventListener('change', sync);
  sync();

  const form = h('form', { class: 'card alert-form', 'aria-label': rule ? `Edit rule ${rule.name}` : 'New alert rule' },
    h('h2', null, rule ? `Edit “${rule.name}”` : 'New alert rule'),
    field('alert-name', 'Name', name),
    field('alert-trigger', 'When', trigger),
    freq,
    h('fieldset', { class: 'alert-row' }, h('legend', null, 'Only for events with'),
      field('alert-level', 'Level', level), field('alert-environment', 'Environment', env),
      field('alert-release', 'Release', release), field('alert-class', 'Class', klass), field('alert-kind', 'Kind', kind)),
    field('alert-interval', 'At most one message per issue every (minutes)', interval),
    field('alert-channel', 'Send to', ctype), urlField, secretField, toField,
    h('div', { class: 'alert-field' }, h('label', null, enabled, ' Enabled')),
    error,
    h('div', { class: 'actions' }, save, cancel));

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    error.textContent = '';
    const filter = {};
    for (const [k, el] of [['level', level], ['environment', env], ['release', release], ['class', klass], ['kind', kind]]) {
      if (el.value.trim()) filter[k] = el.value.trim();
    }
    const channel = { type: ctype.value };
    if (ctype.value === 'email') {
      channel.to = to.value.split(',').map((s) => s.trim()).filter(Boolean);
    } else {
      channel.url = url.value.trim();
    }
    if (ctype.value === 'webhook' && secret.value) channel.secret = secret.value;
    const body = {
      name: name.value.trim(),
      trigger: trigger.value,
      filter,
      interval_minutes: Number(interval.value),
      channel,
      enabled: enabled.checked,
    };
    if (trigger.value === 'frequency') {
      body.count = Number(count.value);
      body.minutes = Number(minutes.value);
    }
    save.disabled = true;
    try {
      const saved = rule ? await api.updateAlert(rule.id, body) : await api.createAlert(project().id, body);
      toast(rule ? `Rule ${saved.name} saved.` : `Rule ${saved.name} created.`);
      onSaved(saved);
    } catch (err) {
      if (err.status !== 401) error.textContent = err.detail || err.message;
      save.disabled = false;
    }
  });
  return form;
}

function deliveryTable(rows) {
  if (!rows.length) return h('p', { class: 'muted' }, 'Nothing sent yet.');
  return h('div', { class: 'table-wrap' }, h('table', { class: 'table deliveries' },
    h('thead', null, h('tr', null, ['When', 'Trigger', 'Status', 'Attempts', 'Answer', 'Delivery id'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', null, rows.map((d) => h('tr', { class: `delivery-${d.status}` },
      h('td', null, timeAgo(d.created)),
      h('td', null, d.trigger.replace('_', ' ')),
      h('td', null, h('span', { class: ['badge', d.status === 'failed' ? 'status-failed' : d.status === 'sent' ? 'status-sent' : 'badge-quiet'] }, d.status),
        d.status === 'queued' && d.next_attempt ? h('span', { class: 'muted small' }, ' next try ', timeAgo(d.next_attempt)) : null),
      h('td', { class: 'num' }, String(d.attempts)),
      h('td', null, [d.response_status ? String(d.response_status) : '', d.error ? ` ${d.error}` : ''].join('').trim() || '—'),
      h('td', { class: 'mono small' }, d.id))))));
}

export async function alertsView(ctx) {
  const root = h('div', { class: 'page' });
  const p = project();
  if (!p) {
    replace(ctx.main, emptyState('No project', 'Create a project first.'));
    return {};
  }
  let rules = [];
  let editing = null; // null: none, 'new', or a rule id
  const logs = new Map(); // rule id -> deliveries shown

  async function load() {
    rules = await api.alerts(p.id);
  }

  async function showLog(rule) {
    logs.set(rule.id, await api.alertDeliveries(rule.id));
    render();
  }

  function card(rule) {
    if (editing === rule.id) {
      return ruleForm(rule, async () => { editing = null; await load(); render(); }, () => { editing = null; render(); });
    }
    const edit = h('button', { type: 'button', class: 'btn btn-small' }, 'Edit');
    const test = h('button', { type: 'button', class: 'btn btn-small' }, 'Send test');
    const log = h('button', { type: 'button', class: 'btn btn-small' }, logs.has(rule.id) ? 'Refresh log' : 'Delivery log');
    const del = h('button', { type: 'button', class: 'btn btn-small btn-quiet' }, 'Delete');
    edit.addEventListener('click', () => { editing = rule.id; render(); });
    log.addEventListener('click', () => showLog(rule).catch((e) => toast(e.detail || e.message, 'toast-error')));
    test.addEventListener('click', async () => {
      test.disabled = true;
      try {
        const d = await api.testAlert(rule.id);
        if (d.status === 'sent') toast('Test message delivered.');
        else toast(`Test message failed: ${d.error || d.status}`, 'toast-error');
        await showLog(rule);
      } catch (e) {
        toast(e.detail || e.message, 'toast-error');
        test.disabled = false;
      }
    });
    let armed = false;
    del.addEventListener('click', async () => {
      if (!armed) { armed = true; del.textContent = 'Really delete?'; return; }
      try {
        await api.deleteAlert(rule.id);
        toast(`Rule ${rule.name} deleted.`);
        logs.delete(rule.id);
        await load();
        render();
      } catch (e) { toast(e.detail || e.message, 'toast-error'); }
    });
    return h('section', { class: 'card alert-card', dataset: { rule: String(rule.id) } },
      h('div', { class: 'project-card-head' },
        h('h2', null, rule.name),
        rule.enabled ? null : h('span', { class: 'badge badge-quiet' }, 'disabled')),
      h('p', null, describe(rule)),
      h('p', { class: 'muted' }, channelText(rule.channel), ` · at most one message per issue every ${rule.interval_minutes} min`),
      h('div', { class: 'actions' }, edit, test, log, del),
      logs.has(rule.id) ? h('div', { class: 'alert-log' }, h('h3', null, 'Recent deliveries'), deliveryTable(logs.get(rule.id))) : null);
  }

  function render() {
    const add = h('button', { type: 'button', class: 'btn btn-primary' }, 'New rule');
    add.addEventListener('click', () => { editing = 'new'; render(); });
    replace(root,
      h('div', { class: 'page-head' }, h('div', null,
        h('h1', null, 'Alerts'),
        h('p', { class: 'muted page-sub' }, `Tell the team when something breaks in ${p.name}: by webhook, Slack-compatible webhook or email.`)),
        editing === 'new' ? null : add),
      editing === 'new' ? ruleForm(null, async () => { editing = null; await load(); render(); }, () => { editing = null; render(); }) : null,
      rules.length ? rules.map(card) : (editing === 'new' ? null : h('p', { class: 'muted empty-rules' }, 'No alert rules yet.')));
  }

  try {
    await load();
  } catch (e) {
    if (ctx.alive()) replace(ctx.main, errorBox(e));
    return {};
  }
  if (!ctx.alive()) return {};
  render();
  replace(ctx.main, root);
  return {};
}
