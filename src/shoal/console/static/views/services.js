// Services: every service with replicas, update state, ports and networks (from the console's
// aggregate, one request however many services and tasks).
import { consoleServices } from '../api.js';
import { field, h, link, replace, stateBadge, table } from '../dom.js';

export function serviceColumns() {
  return [
    { label: 'Name', cell: (s) => link(`#/services/${s.ID}`, s.Name) },
    { label: 'Stack', cell: (s) => (s.Stack ? link(`#/stacks/${encodeURIComponent(s.Stack)}`, s.Stack) : '') },
    { label: 'Mode', cell: (s) => s.Mode },
    { label: 'Replicas', cls: 'replicas', cell: (s) => h('span', { class: s.Running === s.Desired ? '' : 'warn-text' }, `${s.Running}/${s.Desired}`,
      s.Pending ? ` (${s.Pending} pending)` : '') },
    { label: 'Image', cell: (s) => (s.Image || '').replace(/@sha256:.*/, '') },
    { label: 'Update', cell: (s) => (s.UpdateState ? stateBadge(s.UpdateState) : '') },
    { label: 'Ports', cell: (s) => (s.Ports || []).join(', ') },
    { label: 'Networks', cell: (s) => (s.Networks || []).join(', ') },
  ];
}

export default function services(root) {
  const filter = h('input', { type: 'search', id: 'service-filter', placeholder: 'name, stack, image…' });
  const list = h('div');
  const state = {};
  let data = [];
  const draw = () => {
    const q = filter.value.trim().toLowerCase();
    const rows = q ? data.filter((s) => `${s.Name} ${s.Stack} ${s.Image}`.toLowerCase().includes(q)) : data;
    replace(list, table(serviceColumns(), rows, { caption: `${rows.length} service(s)`, state, pageSize: 100,
      rowAttrs: (s) => ({ 'data-service': s.Name }) }));
  };
  filter.addEventListener('input', () => { state.page = 0; draw(); });
  replace(root, h('h1', 'Services'), h('div.toolbar', {}, field('Filter', filter),
    h('a.button', { href: '#/create' }, 'Create a service'), h('a.button', { href: '#/deploy' }, 'Deploy a stack')), list);
  return {
    title: 'Services', root, kinds: ['service', 'task'],
    async refresh() {
      data = (await consoleServices()).sort((a, b) => a.Name.localeCompare(b.Name));
      draw();
    },
  };
}
