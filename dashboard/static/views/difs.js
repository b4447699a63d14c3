// Debug files: what was uploaded for symbolication (sentry-cli, curl or the
// collector's CLI), with its ids, size, features and last use; deletable.
import { h, replace } from '../dom.js';
import { api } from '../api.js';
import { state, project, timeAgo, emptyState, toast } from '../shell.js';
import { int } from '../format.js';

function size(n) {
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KB`;
  return `${int(n)} B`;
}

function uploadHelp(p) {
  const name = p ? p.name : 'default';
  const base = location.origin;
  return h('div', { class: 'difs-help' },
    h('p', { class: 'muted' }, 'Upload the debug companion of a release build (objcopy --only-keep-debug), or the unstripped binary, with sentry-cli:'),
    h('pre', { class: 'snippet' }, `sentry-cli --url ${base} --auth-token <API token> debug-files upload --org errscope --project ${name} --include-sources target/release/app.debug`),
    h('p', { class: 'muted' }, 'or without it:'),
    h('pre', { class: 'snippet' }, `errscope-collector debug-files upload --project ${name} --data <data dir> target/release/app.debug`));
}

export async function difsView(ctx) {
  const root = h('div', { class: 'page' });
  const p = project();
  const pid = state.pid;

  async function load() {
    const files = await api.difs(pid);
    if (!ctx.alive()) return;
    const rows = files.map((d) => {
      const del = h('button', { type: 'button', class: 'btn btn-small', 'aria-label': `Delete ${d.objectName}` }, 'Delete');
      // A second click within 5 s confirms: no blocking dialog.
      let armed = null;
      del.addEventListener('click', async () => {
        if (!armed) {
          del.textContent = 'Confirm delete';
          del.classList.add('btn-danger');
          armed = setTimeout(() => { armed = null; del.textContent = 'Delete'; del.classList.remove('btn-danger'); }, 5000);
          return;
        }
        clearTimeout(armed);
        del.disabled = true;
        try {
          await api.deleteDif(pid, d.id);
          toast(`${d.objectName} deleted.`);
          await load();
        } catch (err) {
          if (err.status !== 401) toast(`Could not delete: ${err.detail || err.message}`, 'toast-error');
          del.disabled = false;
        }
      });
      return h('tr', { 'data-dif': d.id },
        h('td', null, h('div', { class: 'dif-name' }, d.objectName),
          h('div', { class: 'muted dif-kind' }, `${d.kind} · ${(d.features || []).join(', ') || 'no features'}`)),
        h('td', { class: 'mono dif-ids' },
          h('div', { title: 'debug id' }, d.debugId),
          d.codeId ? h('div', { class: 'muted', title: 'code id (build id)' }, d.codeId) : null),
        h('td', { class: 'r' }, size(d.size)),
        h('td', null, d.cpuName),
        h('td', null, d.hasSources ? 'yes' : 'no'),
        h('td', { class: 'when' }, timeAgo(d.dateCreated)),
        h('td', { class: 'when' }, d.lastUsed ? timeAgo(d.lastUsed) : 'never'),
        h('td', { class: 'r' }, del));
    });
    const total = files.reduce((n, d) => n + d.size, 0);
    replace(root,
      h('div', { class: 'page-head' }, h('div', null,
        h('h1', null, 'Debug files'),
        h('p', { class: 'muted page-sub' }, files.length
          ? `${files.length} file${files.length === 1 ? '' : 's'}, ${size(total)}; the least recently used are deleted beyond the collector's budget.`
          : 'Frames of stripped and release builds get their functions, files and lines from these files.'))),
      files.length
        ? h('div', { class: 'table-wrap' }, h('table', { class: 'table difs-table' },
          h('thead', null, h('tr', null,
            h('th', null, 'Name'), h('th', null, 'Debug id / code id'), h('th', { class: 'r' }, 'Size'),
            h('th', null, 'Arch'), h('th', null, 'Sources'), h('th', null, 'Uploaded'), h('th', null, 'Last used'),
            h('th', { class: 'r' }, h('span', { class: 'sr-only' }, 'Actions')))),
          h('tbody', null, rows)))
        : emptyState('No debug files yet', uploadHelp(p)),
      files.length ? h('section', { class: 'card' }, uploadHelp(p)) : null);
  }

  await load();
  if (!ctx.alive()) return {};
  replace(ctx.main, root);
  return { refresh: load };
}
