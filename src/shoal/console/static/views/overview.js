// The cluster at a glance: nodes by state, services converged or not, tasks, resources, events.
import { aggregate, api, consoleServices } from '../api.js';
import { bytes, cpus, h, link, replace, table } from '../dom.js';

/** /shoal/console/overview's shape from the plain routes (small clusters, before the aggregate). */
async function computed() {
  const since = Math.floor(Date.now() / 1000) - 3600;
  const [nodes, services, running, events] = await Promise.all([
    api('/nodes'), consoleServices(),
    api('/tasks', { query: { filters: { 'desired-state': ['running'] } } }),
    api('/events', { query: { since, until: Math.floor(Date.now() / 1000), filters: { scope: ['swarm'] } } })
      .catch(() => ''),
  ]);
  const n = { ready: 0, down: 0, unknown: 0, disconnected: 0, drain: 0, pause: 0, active: 0, managers: 0 };
  const res = { NanoCPUs: 0, MemoryBytes: 0, ReservedNanoCPUs: 0, ReservedMemoryBytes: 0 };
  for (const node of nodes) {
    const st = (node.Status && node.Status.State) || 'unknown';
    n[st] = (n[st] || 0) + 1;
    const av = node.Spec.Availability || 'active';
    n[av] = (n[av] || 0) + 1;
    if (node.Spec.Role === 'manager') n.managers++;
    const r = (node.Description && node.Description.Resources) || {};
    res.NanoCPUs += r.NanoCPUs || 0;
    res.MemoryBytes += r.MemoryBytes || 0;
  }
  const t = { running: 0, pending: 0, failed: 0, total: running.length };
  for (const task of running) {
    const st = task.Status.State;
    if (st === 'running') t.running++;
    else if (['new', 'pending', 'assigned', 'accepted', 'preparing', 'ready', 'starting'].includes(st)) t.pending++;
    else if (['failed', 'rejected'].includes(st)) t.failed++;
    const r = (task.Spec.Resources && task.Spec.Resources.Reservations) || {};
    res.ReservedNanoCPUs += r.NanoCPUs || 0;
    res.ReservedMemoryBytes += r.MemoryBytes || 0;
  }
  const notConverged = services.filter((s) => s.Mode.endsWith('job') ? false : s.Running !== s.Desired);
  const evs = typeof events === 'string'
    ? events.split('\n').filter(Boolean).map((l) => { try { return JSON.parse(l); } catch { return null; } }).filter(Boolean)
    : [];
  return {
    Nodes: n,
    Services: { total: services.length, converged: services.length - notConverged.length,
      updating: services.filter((s) => s.UpdateState === 'updating').length,
      not_converged: notConverged.slice(0, 50).map((s) => ({ ID: s.ID, Name: s.Name, Running: s.Running, Desired: s.Desired })) },
    Tasks: t, Resources: res, Events: evs.slice(-50),
  };
}

function stat(label, value, key, href) {
  const v = h('span.num', { 'data-k': key, text: value });
  return h('div.stat', {}, href ? h('a', { href }, v) : v, h('span.stat-label', { text: label }));
}

function pct(used, total) {
  return total ? Math.round((100 * used) / total) : 0;
}

function meter(label, used, total, fmt) {
  const p = pct(used, total);
  return h('div.meter-row', {},
    h('span', { text: `${label}: ${fmt(used)} reserved of ${fmt(total)} (${p} %)` }),
    h('meter', { min: 0, max: 100, value: p, 'aria-label': `${label} reserved, percent` }));
}

export function eventText(ev) {
  const a = ev.Actor || {};
  const attrs = a.Attributes || {};
  const name = attrs.name || (a.ID || '').slice(0, 12);
  const detail = Object.entries(attrs).filter(([k]) => k !== 'name' && !k.startsWith('com.docker'))
    .slice(0, 3).map(([k, v]) => `${k}=${v}`).join(' ');
  return `${ev.Type || ev.type} ${ev.Action || ev.status} ${name}${detail ? ' (' + detail + ')' : ''}`;
}

export function eventTime(ev) {
  const ns = ev.timeNano ? Number(BigInt(ev.timeNano) / 1000000n) : (ev.time || 0) * 1000;
  return new Date(ns).toLocaleTimeString();
}

export default function overview(root) {
  const body = h('div.overview-body');
  replace(root, h('h1', 'Overview'), body);
  root.setAttribute('aria-busy', 'true');
  const state = {};
  return {
    title: 'Overview',
    root,
    kinds: ['node', 'service', 'task', 'event'],
    async refresh() {
      const o = await aggregate('/shoal/console/overview', computed);
      const N = o.Nodes, S = o.Services, T = o.Tasks, R = o.Resources;
      const nodeTotal = (N.ready || 0) + (N.down || 0) + (N.unknown || 0) + (N.disconnected || 0);
      replace(body,
        h('div.cards', {},
          h('section.card', { 'aria-labelledby': 'ov-nodes' }, h('h2#ov-nodes', {}, link('#/nodes', 'Nodes')),
            h('div.stats', {}, stat('total', nodeTotal, 'nodes-total', '#/nodes'), stat('ready', N.ready, 'nodes-ready'),
              stat('down', N.down, 'nodes-down'), stat('managers', N.managers, 'nodes-managers')),
            h('p.muted', { text: `active ${N.active || 0} · pause ${N.pause || 0} · drain ${N.drain || 0}` +
              (N.unknown ? ` · unknown ${N.unknown}` : '') + (N.disconnected ? ` · disconnected ${N.disconnected}` : '') })),
          h('section.card', { 'aria-labelledby': 'ov-services' }, h('h2#ov-services', {}, link('#/services', 'Services')),
            h('div.stats', {}, stat('total', S.total, 'services-total', '#/services'),
              stat('converged', S.converged, 'services-converged'),
              stat('not converged', S.total - S.converged, 'services-not-converged'),
              stat('updating', S.updating, 'services-updating'))),
          h('section.card', { 'aria-labelledby': 'ov-tasks' }, h('h2#ov-tasks', 'Tasks'),
            h('div.stats', {}, stat('running', T.running, 'tasks-running'), stat('pending', T.pending, 'tasks-pending'),
              stat('failed', T.failed, 'tasks-failed'))),
          h('section.card', { 'aria-labelledby': 'ov-res' }, h('h2#ov-res', 'Resources'),
            meter('CPU', R.ReservedNanoCPUs, R.NanoCPUs, cpus), meter('Memory', R.ReservedMemoryBytes, R.MemoryBytes, bytes))),
        (S.not_converged || []).length ? h('section', { 'aria-labelledby': 'ov-nc' }, h('h2#ov-nc', 'Not converged'),
          table([
            { label: 'Service', cell: (s) => link(`#/services/${s.ID}`, s.Name) },
            { label: 'Running', cell: (s) => `${s.Running}/${s.Desired}` },
          ], S.not_converged, { caption: 'Services not at their desired replicas', state })) : null,
        h('section', { 'aria-labelledby': 'ov-ev' }, h('h2#ov-ev', {}, link('#/events', 'Recent events')),
          h('ol.events', { reversed: true }, (o.Events || []).slice(-15).reverse().map((ev) =>
            h('li', {}, h('time', { text: eventTime(ev) }), ' ', eventText(ev))))));
      root.dataset.loaded = '1';
      window.__shoalOverviewShownAt = window.__shoalOverviewShownAt || performance.now();
    },
  };
}
