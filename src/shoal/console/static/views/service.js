// One service: replicas, update status and progress, ports, networks, its tasks (with why pending
// ones are not placed); scale, update the image (rolling or blue-green), force update, rollback, remove.
import { api, imageShort, modeOf, portsOf, STACK_LABEL } from '../api.js';
import { ago, confirmDialog, dl, field, h, link, replace, say, stateBadge, table } from '../dom.js';
import { hostnames, taskColumns } from '../tasks.js';

export { taskColumns };

const STRATEGY_LABEL = 'shoal.update-strategy';

/** POST /services/{id}/update with the spec ``change`` makes of the current one. */
export async function updateService(id, change, what, query = {}) {
  const svc = await api(`/services/${id}`);
  const spec = structuredClone(svc.Spec);
  change(spec);
  try {
    await api(`/services/${svc.ID}/update`, { method: 'POST', query: { version: svc.Version.Index, ...query }, body: spec });
    say(`${spec.Name}: ${what}`);
    return true;
  } catch (e) {
    say(`${spec.Name}: ${what} failed: ${e.message}`, 'error');
    return false;
  }
}

export default function service(root, params, ctx) {
  const head = h('h1', 'Service');
  const info = h('div.service-info');
  const progress = h('div#update-progress', { 'aria-live': 'polite' });
  const tasksBox = h('div');
  const state = {};
  const showAll = h('input', { type: 'checkbox', id: 'tasks-history' });
  let svc = null;

  const replicas = h('input', { type: 'number', min: 0, max: 100000, id: 'scale-replicas', inputmode: 'numeric' });
  const scaleBtn = h('button', { type: 'submit', id: 'scale-apply' }, 'Scale');
  const scaleForm = h('form.row', { 'aria-label': 'Scale' }, field('Replicas', replicas), scaleBtn);
  scaleForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const n = Number(replicas.value);
    if (!Number.isInteger(n) || n < 0) { say('Replicas must be a whole number ≥ 0', 'error'); replicas.focus(); return; }
    await updateService(params.id, (s) => { s.Mode = { Replicated: { Replicas: n } }; }, `scaled to ${n}`);
  });

  const image = h('input', { id: 'update-image', autocomplete: 'off', spellcheck: 'false' });
  const strategy = h('select', { id: 'update-strategy' }, h('option', { value: 'rolling', text: 'rolling' }),
    h('option', { value: 'blue-green', text: 'blue-green' }));
  const updateForm = h('form.row', { 'aria-label': 'Update image' }, field('Image', image), field('Strategy', strategy),
    h('button', { type: 'submit', id: 'update-apply' }, 'Update'));
  updateForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const img = image.value.trim();
    if (!img) { say('Give an image', 'error'); image.focus(); return; }
    await updateService(params.id, (s) => {
      s.TaskTemplate.ContainerSpec.Image = img;
      s.Labels = { ...(s.Labels || {}) };
      if (strategy.value === 'blue-green') s.Labels[STRATEGY_LABEL] = 'blue-green'; else delete s.Labels[STRATEGY_LABEL];
    }, `update to ${img} (${strategy.value}) started`);
  });

  const force = h('button', { type: 'button', id: 'force-update' }, 'Force update');
  force.addEventListener('click', () => updateService(params.id, (s) => {
    s.TaskTemplate.ForceUpdate = (s.TaskTemplate.ForceUpdate || 0) + 1;
  }, 'force update started'));
  const rollback = h('button', { type: 'button', id: 'rollback' }, 'Roll back');
  rollback.addEventListener('click', async () => {
    if (!(await confirmDialog('Roll this service back to its previous spec?', 'Roll back'))) return;
    await updateService(params.id, () => {}, 'rollback started', { rollback: 'previous' });
  });
  const remove = h('button.danger', { type: 'button', id: 'remove-service' }, 'Remove');
  remove.addEventListener('click', async () => {
    const name = svc ? svc.Spec.Name : params.id;
    if (!(await confirmDialog(`Remove service ${name} and all its tasks?`, 'Remove'))) return;
    try {
      await api(`/services/${params.id}`, { method: 'DELETE' });
      say(`${name} removed`);
      ctx.navigate('#/services');
    } catch (e) {
      say(`Remove failed: ${e.message}`, 'error');
    }
  });
  showAll.addEventListener('change', () => refresh());

  const actions = h('section.actions-panel', { 'aria-labelledby': 'svc-actions' }, h('h2#svc-actions', 'Actions'),
    scaleForm, updateForm, h('div.row', {}, force, rollback, remove));
  const logsLink = h('a', { href: `#/logs/${params.id}` }, 'Logs');
  replace(root, head, h('p.links', {}, logsLink), info, progress, actions,
    h('h2', 'Tasks'), h('label.check', {}, showAll, ' Show stopped tasks (history)'), tasksBox);

  async function refresh(first) {
    const running = { service: [params.id], 'desired-state': ['running'] };
    const [s, tasks, fresh, nodes] = await Promise.all([
      api(`/services/${params.id}`),
      api('/tasks', { query: { filters: showAll.checked ? { service: [params.id] } : running } }),
      api('/tasks', { query: { filters: { ...running, '_up-to-date': ['true'] } } }),
      hostnames(),
    ]);
    svc = s;
    const spec = s.Spec;
    const mode = modeOf(spec);
    const desired = mode === 'replicated' ? spec.Mode.Replicated.Replicas ?? 1 : null;
    const runningCount = tasks.filter((t) => t.Status.State === 'running' && t.DesiredState === 'running').length;
    head.textContent = `Service ${spec.Name}`;
    if (first) {
      replicas.value = desired ?? '';
      image.value = imageShort(spec.TaskTemplate.ContainerSpec?.Image);
      strategy.value = (spec.Labels || {})[STRATEGY_LABEL] === 'blue-green' ? 'blue-green' : 'rolling';
    }
    scaleForm.hidden = mode !== 'replicated';
    rollback.disabled = !s.PreviousSpec;
    const stack = (spec.Labels || {})[STACK_LABEL];
    const nets = (spec.TaskTemplate.Networks || []).map((n) => n.Target);
    const netNames = nets.length ? await api('/networks').then((all) => nets.map((id) => (all.find((n) => n.Id === id) || {}).Name || id)).catch(() => nets) : [];
    const upd = s.UpdateStatus || {};
    const pending = tasks.filter((t) => ['new', 'pending', 'assigned'].includes(t.Status.State) && t.DesiredState === 'running');
    replace(info, dl([
      ['ID', s.ID],
      stack ? ['Stack', link(`#/stacks/${encodeURIComponent(stack)}`, stack)] : null,
      ['Mode', mode],
      ['Image', imageShort(spec.TaskTemplate.ContainerSpec?.Image), { 'data-k': 'image' }],
      ['Replicas', desired === null ? `${runningCount} running` : `${runningCount}/${desired}`, { 'data-k': 'replicas' }],
      ['Update', upd.State ? h('span', {}, stateBadge(upd.State), ' ', upd.Message || '', ' ',
        h('small.muted', { text: ago(upd.CompletedAt || upd.StartedAt) })) : 'none', { 'data-k': 'update-state', 'data-state': upd.State || '', 'data-started': upd.StartedAt || '' }],
      ['Strategy', (spec.Labels || {})[STRATEGY_LABEL] === 'blue-green' ? 'blue-green' : 'rolling'],
      ['Ports', portsOf(s).join(', ') || 'none'],
      ['Networks', netNames.join(', ') || 'none'],
      spec.TaskTemplate.Placement?.Constraints?.length ? ['Constraints', spec.TaskTemplate.Placement.Constraints.join(', ')] : null,
      pending.length ? ['Pending', `${pending.length} task(s) not placed: see the Error column`] : null,
    ]));
    const upToDate = fresh.filter((t) => t.Status.State === 'running').length;
    const total = desired ?? Math.max(runningCount, upToDate);
    if (upd.State === 'updating' || upd.State === 'rollback_started') {
      replace(progress, h('p', {}, `${upd.State === 'updating' ? 'Updating' : 'Rolling back'}: ${upToDate} of ${total} task(s) on the new spec `,
        h('progress', { max: total || 1, value: upToDate, 'aria-label': 'Update progress' })));
    } else {
      replace(progress);
    }
    replace(tasksBox, table(taskColumns({ [s.ID]: spec.Name }, { nodes }), tasks, { caption: `${tasks.length} task(s)`, state, pageSize: 50 }));
  }
  return { title: 'Service', root, kinds: ['service', 'task'], refresh };
}
