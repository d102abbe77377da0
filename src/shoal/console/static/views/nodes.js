// Nodes: a paged, filterable list (1,000 nodes draw one page of rows).
import { api } from '../api.js';
import { bytes, cpus, field, h, link, replace, stateBadge, table } from '../dom.js';

export default function nodes(root) {
  const filter = h('input', { type: 'search', id: 'node-filter', placeholder: 'hostname, label, id…' });
  const list = h('div');
  const state = {};
  let data = [];
  const draw = () => {
    const q = filter.value.trim().toLowerCase();
    const rows = !q ? data : data.filter((n) => [n.ID, n.Description?.Hostname, n.Status?.State, n.Spec.Availability,
      n.Spec.Role, ...Object.entries(n.Spec.Labels || {}).map(([k, v]) => `${k}=${v}`)].join(' ').toLowerCase().includes(q));
    replace(list, table([
      { label: 'Hostname', cell: (n) => link(`#/nodes/${n.ID}`, n.Description?.Hostname || n.ID.slice(0, 12)) },
      { label: 'State', cell: (n) => stateBadge(n.Status?.State) },
      { label: 'Availability', cell: (n) => stateBadge(n.Spec.Availability) },
      { label: 'Role', cell: (n) => n.Spec.Role + (n.ManagerStatus?.Leader ? ' (leader)' : '') },
      { label: 'CPUs', cell: (n) => cpus(n.Description?.Resources?.NanoCPUs || 0) },
      { label: 'Memory', cell: (n) => bytes(n.Description?.Resources?.MemoryBytes || 0) },
      { label: 'Address', cell: (n) => n.Status?.Addr || '' },
    ], rows, { caption: `${rows.length} node(s)`, state, pageSize: 50, rowAttrs: (n) => ({ 'data-node': n.Description?.Hostname || n.ID }) }));
  };
  filter.addEventListener('input', () => { state.page = 0; draw(); });
  replace(root, h('h1', 'Nodes'), h('div.toolbar', {}, field('Filter', filter)), list);
  return {
    title: 'Nodes', root, kinds: ['node'],
    async refresh() {
      data = await api('/nodes');
      data.sort((a, b) => (a.Description?.Hostname || '').localeCompare(b.Description?.Hostname || ''));
      draw();
    },
  };
}
