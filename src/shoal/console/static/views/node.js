// One node: its state, resources, labels, availability and its tasks; change availability and labels.
import { ApiError, api } from '../api.js';
import { bytes, confirmDialog, cpus, dl, field, h, replace, say, short, stateBadge, table } from '../dom.js';
import { serviceNames, taskColumns } from '../tasks.js';

export default function node(root, params) {
  const head = h('h1', 'Node');
  const info = h('div');
  const actions = h('div.actions-panel');
  const tasksBox = h('div');
  const state = {};
  let current = null;

  async function update(change, what) {
    const n = await api(`/nodes/${params.id}`);
    const spec = structuredClone(n.Spec);
    change(spec);
    try {
      await api(`/nodes/${n.ID}/update`, { method: 'POST', query: { version: n.Version.Index }, body: spec });
      say(`${n.Description?.Hostname || short(n.ID)}: ${what}`);
    } catch (e) {
      say(`${what} failed: ${e.message}`, 'error');
      if (!(e instanceof ApiError)) throw e;
    }
  }

  const avail = h('select', { id: 'node-availability' }, ['active', 'pause', 'drain'].map((a) => h('option', { value: a, text: a })));
  const availBtn = h('button', { type: 'button', id: 'node-availability-apply' }, 'Set availability');
  availBtn.addEventListener('click', async () => {
    const v = avail.value;
    if (v === 'drain' && !(await confirmDialog('Drain this node? Its tasks move to other nodes.', 'Drain'))) return;
    await update((s) => { s.Availability = v; }, `availability ${v}`);
  });
  const labelKey = h('input', { id: 'node-label-key', placeholder: 'key', autocomplete: 'off' });
  const labelVal = h('input', { id: 'node-label-value', placeholder: 'value', autocomplete: 'off' });
  const labelAdd = h('button', { type: 'button', id: 'node-label-add' }, 'Add label');
  labelAdd.addEventListener('click', async () => {
    const k = labelKey.value.trim();
    if (!k) { say('A label needs a key', 'error'); labelKey.focus(); return; }
    await update((s) => { s.Labels = { ...(s.Labels || {}), [k]: labelVal.value }; }, `label ${k} added`);
    labelKey.value = ''; labelVal.value = '';
  });
  replace(actions,
    h('h2', 'Actions'),
    h('div.row', {}, field('Availability', avail), availBtn),
    h('div.row', {}, field('Label key', labelKey), field('Label value', labelVal), labelAdd));
  replace(root, head, info, actions, h('h2', 'Tasks'), tasksBox);

  return {
    title: 'Node', root, kinds: ['node', 'task'],
    async refresh(first) {
      const [n, tasks] = await Promise.all([
        api(`/nodes/${params.id}`),
        api('/tasks', { query: { filters: { node: [params.id], 'desired-state': ['running'] } } }),
      ]);
      current = n;
      head.textContent = `Node ${n.Description?.Hostname || short(n.ID)}`;
      if (first) avail.value = n.Spec.Availability;
      const r = n.Description?.Resources || {};
      const labels = Object.entries(n.Spec.Labels || {});
      const engineLabels = Object.entries(n.Description?.Engine?.Labels || {});
      replace(info, dl([
        ['ID', n.ID],
        ['State', stateBadge(n.Status?.State), { 'data-k': 'node-state' }],
        ['Availability', stateBadge(n.Spec.Availability), { 'data-k': 'node-availability' }],
        ['Role', n.Spec.Role + (n.ManagerStatus ? ` (${n.ManagerStatus.Leader ? 'leader' : n.ManagerStatus.Reachability || ''})` : '')],
        ['Address', n.Status?.Addr || ''],
        ['Resources', `${cpus(r.NanoCPUs || 0)} CPUs, ${bytes(r.MemoryBytes || 0)}`],
        ['Engine', `${n.Description?.Engine?.EngineVersion || ''} ${n.Description?.Platform?.OS || ''}/${n.Description?.Platform?.Architecture || ''}`],
        ['Labels', labels.length ? h('ul.labels', {}, labels.map(([k, v]) => h('li', {}, h('code', { text: `${k}=${v}` }), ' ',
          h('button.small', { type: 'button', 'aria-label': `Remove label ${k}`, onclick: () => update((s) => { delete s.Labels[k]; }, `label ${k} removed`) }, '✕'))))
          : 'none'],
        engineLabels.length ? ['Engine labels', engineLabels.map(([k, v]) => `${k}=${v}`).join(', ')] : null,
        n.Status?.Message ? ['Message', n.Status.Message] : null,
      ]));
      const names = await serviceNames(tasks);
      replace(tasksBox, table(taskColumns(names, { node: false }), tasks, { caption: `${tasks.length} task(s) on this node`, state, pageSize: 50 }));
      return current;
    },
  };
}
