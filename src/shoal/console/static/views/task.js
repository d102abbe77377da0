// One task: its state and the slot's history (earlier tasks of the same slot), health probes, the
// placement explanation if it waits, and the tail of its logs.
import { api } from '../api.js';
import { ago, dl, h, link, replace, short, stateBadge, table } from '../dom.js';
import { readLogs } from '../logstream.js';
import { taskError } from '../tasks.js';

export default function task(root, params) {
  const head = h('h1', 'Task');
  const info = h('div');
  const history = h('div');
  const health = h('div');
  const out = h('pre#task-logs.logs', { tabindex: 0, 'aria-label': 'Last log lines' });
  replace(root, head, info, h('h2', 'Health'), health, h('h2', 'History of this slot'), history, h('h2', 'Logs (last 100 lines)'), out);
  let logsFor = '';
  let controller = null;
  return {
    title: 'Task', root, kinds: ['task'],
    async refresh() {
      const t = await api(`/tasks/${params.id}`);
      const [svc, node, siblings] = await Promise.all([
        api(`/services/${t.ServiceID}`).catch(() => null),
        t.NodeID ? api(`/nodes/${t.NodeID}`).catch(() => null) : null,
        api('/tasks', { query: { filters: { service: [t.ServiceID] } } }),
      ]);
      const svcName = svc?.Spec?.Name || short(t.ServiceID);
      head.textContent = `Task ${svcName}.${t.Slot || short(t.NodeID)}`;
      const st = t.Status;
      replace(info, dl([
        ['ID', t.ID],
        ['Service', link(`#/services/${t.ServiceID}`, svcName)],
        ['Node', t.NodeID ? link(`#/nodes/${t.NodeID}`, node?.Description?.Hostname || short(t.NodeID)) : 'not placed'],
        ['State', h('span', {}, stateBadge(st.State), ` since ${ago(st.Timestamp)}`), { 'data-k': 'task-state' }],
        ['Desired state', t.DesiredState],
        ['Message', st.Message || ''],
        taskError(t) ? ['Error', taskError(t), { class: 'err' }] : null,
        ['Image', t.Spec.ContainerSpec?.Image || ''],
        st.ContainerStatus?.ContainerID ? ['Container', `${short(st.ContainerStatus.ContainerID)} (pid ${st.ContainerStatus.PID}, exit ${st.ContainerStatus.ExitCode})`] : null,
        st.PortStatus?.Ports?.length ? ['Ports', st.PortStatus.Ports.map((p) => `${p.PublishedPort}:${p.TargetPort}`).join(', ')] : null,
        ['Created', `${t.CreatedAt} (${ago(t.CreatedAt)})`],
      ]));
      const hl = st.Health;
      replace(health, hl ? h('div', {}, dl([['Status', stateBadge(hl.Status)], ['Source', hl.Source || ''], ['Failing streak', String(hl.FailingStreak || 0)]]),
        table([{ label: 'Start', cell: (r) => r.Start }, { label: 'Exit', cell: (r) => String(r.ExitCode) }, { label: 'Output', cell: (r) => r.Output }],
          hl.Log || [], { caption: 'Last probes' })) : h('p.muted', 'No health check.'));
      const slot = siblings.filter((x) => (t.Slot ? x.Slot === t.Slot : x.NodeID === t.NodeID))
        .sort((a, b) => (b.CreatedAt || '').localeCompare(a.CreatedAt || ''));
      replace(history, table([
        { label: 'Task', cell: (x) => (x.ID === t.ID ? h('strong', { text: short(x.ID) }) : link(`#/tasks/${x.ID}`, short(x.ID))) },
        { label: 'State', cell: (x) => h('span', {}, stateBadge(x.Status.State), ' ', h('small.muted', { text: ago(x.Status.Timestamp) })) },
        { label: 'Desired', cell: (x) => x.DesiredState },
        { label: 'Image', cell: (x) => (x.Spec.ContainerSpec?.Image || '').replace(/@sha256:.*/, '') },
        { label: 'Error', cls: 'err', cell: (x) => taskError(x) },
      ], slot, { caption: 'Tasks of this slot, newest first' }));
      if (logsFor !== t.ID && t.NodeID && st.ContainerStatus?.ContainerID) {
        logsFor = t.ID;
        controller = new AbortController();
        replace(out);
        readLogs(`/tasks/${t.ID}/logs`, { tail: '100', follow: '0' },
          (lines) => out.append(...lines.map((l) => h(`span${l.stream === 'stderr' ? '.stderr' : ''}`, { text: `${l.ts.slice(11, 23)} ${l.text}\n` }))),
          controller.signal).catch((e) => { if (e.name !== 'AbortError') out.textContent = `(no logs: ${e.message})`; });
      }
    },
    dispose() { if (controller) controller.abort(); },
  };
}
