// Nodes as columns, tasks as chips (Swarm's visualizer). From the console's aggregate (at most
// 50 tasks per node); computed from /nodes and running tasks on a small cluster without it.
import { aggregate, api } from '../api.js';
import { h, replace, say, stateKind } from '../dom.js';

async function computed() {
  const [nodes, tasks, svcs] = await Promise.all([api('/nodes'),
    api('/tasks', { query: { filters: { 'desired-state': ['running'] } } }), api('/services')]);
  const names = Object.fromEntries(svcs.map((s) => [s.ID, s.Spec.Name]));
  const by = new Map(nodes.map((n) => [n.ID, []]));
  for (const t of tasks) if (by.has(t.NodeID)) by.get(t.NodeID).push([names[t.ServiceID] || t.ServiceID.slice(0, 12), t.Status.State, t.ID]);
  return { Nodes: nodes.map((n) => ({ ID: n.ID, Hostname: n.Description?.Hostname || n.ID.slice(0, 12), State: n.Status?.State,
    Availability: n.Spec.Availability, Role: n.Spec.Role, Tasks: by.get(n.ID).slice(0, 50), TaskCount: by.get(n.ID).length })), Truncated: false };
}

function hue(name) {
  let x = 0;
  for (const c of name) x = (x * 31 + c.charCodeAt(0)) % 360;
  return x;
}

export default function visualizer(root) {
  const grid = h('div.viz', { role: 'list', 'aria-label': 'Nodes and their tasks' });
  replace(root, h('h1', 'Visualizer'), grid);
  return {
    title: 'Visualizer', root, kinds: ['node', 'task'],
    async refresh() {
      const v = await aggregate('/shoal/console/visualizer', computed);
      const nodes = [...v.Nodes].sort((a, b) => (a.Hostname || '').localeCompare(b.Hostname || ''));
      const shown = nodes.slice(0, 200); // 1,000 columns help no one: the first 200, and the count
      replace(grid, shown.map((n) => h(`div.viz-node.${stateKind(n.State) || 'none'}`, { role: 'listitem', 'data-node': n.Hostname },
        h('a.viz-head', { href: `#/nodes/${n.ID}` }, h('strong', { text: n.Hostname }),
          h('small', { text: ` ${n.Role} · ${n.State} · ${n.Availability}` })),
        h('ul.chips', {}, (n.Tasks || []).map(([svc, state, id]) => h('li', {},
          h(`a.chip.${stateKind(state) || 'none'}`, { href: `#/tasks/${id}`, style: { '--h': String(hue(svc)) }, title: `${svc} (${state})`, text: svc })))),
        (n.TaskCount ?? 0) > (n.Tasks || []).length ? h('small.muted', { text: `+${n.TaskCount - n.Tasks.length} more` }) : null)));
      if (nodes.length > shown.length || v.Truncated) say(`Showing ${shown.length} of ${nodes.length} nodes`);
    },
  };
}
