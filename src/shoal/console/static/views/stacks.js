// Stacks: Compose projects the cluster runs, and their services' state.
import { api, consoleServices } from '../api.js';
import { h, link, replace, table } from '../dom.js';

export default function stacks(root) {
  const list = h('div');
  const state = {};
  replace(root, h('h1', 'Stacks'), h('div.toolbar', {}, h('a.button', { href: '#/deploy' }, 'Deploy a stack')), list);
  return {
    title: 'Stacks', root, kinds: ['stack', 'service', 'task'],
    async refresh() {
      const [objs, svcs] = await Promise.all([api('/shoal/stacks').catch(() => []), consoleServices()]);
      const by = new Map();
      for (const st of objs) by.set(st.Spec.Name, { name: st.Spec.Name, services: [], pending: (st.Status?.Pending || []).length });
      for (const s of svcs) {
        if (!s.Stack) continue;
        if (!by.has(s.Stack)) by.set(s.Stack, { name: s.Stack, services: [], pending: 0 });
        by.get(s.Stack).services.push(s);
      }
      const rows = [...by.values()].sort((a, b) => a.name.localeCompare(b.name));
      replace(list, table([
        { label: 'Stack', cell: (r) => link(`#/stacks/${encodeURIComponent(r.name)}`, r.name) },
        { label: 'Services', cell: (r) => String(r.services.length) },
        { label: 'Converged', cell: (r) => `${r.services.filter((s) => s.Running === s.Desired).length}/${r.services.length}` },
        { label: 'Waiting (depends_on)', cell: (r) => String(r.pending) },
      ], rows, { caption: `${rows.length} stack(s)`, state, rowAttrs: (r) => ({ 'data-stack': r.name }) }));
    },
  };
}
