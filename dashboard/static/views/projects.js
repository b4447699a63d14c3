// Setup: each project's DSN and the lines that link the agent; new projects.
import { h, replace } from '../dom.js';
import { api } from '../api.js';
import { state, dsnField, snippet, curlTest, selectProject, renderHeader, toast } from '../shell.js';

export async function projectsView(ctx) {
  const root = h('div', { class: 'page' });

  function render() {
    const name = h('input', { id: 'new-project', name: 'name', required: true, maxlength: 64, placeholder: 'shop-api', autocomplete: 'off' });
    const btn = h('button', { type: 'submit', class: 'btn btn-primary' }, 'Create project');
    const form = h('form', { class: 'inline-form' }, h('label', { for: 'new-project' }, 'New project'), name, btn);
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const n = name.value.trim();
      if (!n) { name.focus(); return; }
      btn.disabled = true;
      try {
        const p = await api.createProject(n);
        state.projects = await api.projects();
        selectProject(String(p.id));
        renderHeader();
        toast(`Project ${p.name} created.`);
        render();
      } catch (err) {
        if (err.status !== 401) toast(`Could not create the project: ${err.detail || err.message}`, 'toast-error');
        btn.disabled = false;
      }
    });
    replace(root,
      h('div', { class: 'page-head' }, h('div', null,
        h('h1', null, 'Setup'),
        h('p', { class: 'muted page-sub' }, 'Each project has its own DSN. Give it to the agent in the service you want to watch.'))),
      state.projects.map((p) => {
        const current = String(p.id) === String(state.pid);
        const use = current ? h('span', { class: 'badge badge-quiet' }, 'current project')
          : h('button', { type: 'button', class: 'btn btn-small' }, 'Switch to this project');
        if (!current) use.addEventListener('click', () => { selectProject(String(p.id)); render(); });
        return h('section', { class: 'card project-card' },
          h('div', { class: 'project-card-head' }, h('h2', null, p.name), h('span', { class: 'muted mono' }, `id ${p.id}`), use),
          dsnField(p.dsn),
          snippet(p.dsn),
          curlTest(p.dsn));
      }),
      h('section', { class: 'card' }, form));
  }

  state.projects = await api.projects();
  if (!ctx.alive()) return {};
  render();
  replace(ctx.main, root);
  return {};
}
