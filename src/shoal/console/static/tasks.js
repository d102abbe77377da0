// Task tables shared by the service, node and stack pages.
import { api } from './api.js';
import { ago, h, link, short, stateBadge } from './dom.js';

export const PENDING = new Set(['new', 'pending', 'assigned', 'accepted', 'preparing', 'ready', 'starting']);

/** What `shoal service ps` shows in its ERROR column: why a task is not running (for a pending
 * task, the scheduler's placement explanation, e.g. "no suitable node (...)"). */
export function taskError(t) {
  const st = t.Status || {};
  if (st.Err) return st.Err;
  if (PENDING.has(st.State) && st.Message && st.Message !== st.State) return st.Message;
  return '';
}

export function taskName(t, names) {
  const svc = (names && names[t.ServiceID]) || (t.ServiceAnnotations && t.ServiceAnnotations.Name) || short(t.ServiceID);
  return `${svc}.${t.Slot || short(t.NodeID)}`;
}

/** Columns of a task table; nodes: {id: hostname} when known. */
export function taskColumns(names, { node = true, nodes = {} } = {}) {
  return [
    { label: 'Task', cell: (t) => link(`#/tasks/${t.ID}`, taskName(t, names)) },
    { label: 'Image', cell: (t) => (t.Spec.ContainerSpec?.Image || '').replace(/@sha256:.*/, '') },
    node ? { label: 'Node', cell: (t) => (t.NodeID ? link(`#/nodes/${t.NodeID}`, nodes[t.NodeID] || short(t.NodeID)) : '—') } : null,
    { label: 'Desired', cell: (t) => t.DesiredState },
    { label: 'State', cell: (t) => h('span', {}, stateBadge(t.Status.State), ' ',
      h('small.muted', { text: ago(t.Status.Timestamp) }), t.Status.Health?.Status ? [' ', stateBadge(t.Status.Health.Status)] : null) },
    { label: 'Error', cls: 'err', cell: (t) => taskError(t) },
  ].filter(Boolean);
}

export async function serviceNames(tasks) {
  const ids = [...new Set(tasks.map((t) => t.ServiceID))];
  if (!ids.length) return {};
  const svcs = await api('/services', { query: { filters: { id: ids.slice(0, 200) } } }).catch(() => []);
  return Object.fromEntries(svcs.map((s) => [s.ID, s.Spec.Name]));
}

let nodeNames = null;
let nodeNamesAt = 0;
/** {node id: hostname}, cached 10 s (a service page with a few tasks must not list nodes each refresh). */
export async function hostnames() {
  if (!nodeNames || Date.now() - nodeNamesAt > 10000) {
    const nodes = await api('/nodes');
    nodeNames = Object.fromEntries(nodes.map((n) => [n.ID, n.Description?.Hostname || short(n.ID)]));
    nodeNamesAt = Date.now();
  }
  return nodeNames;
}
