// Create a service from a form: the common fields of `docker service create`.
import { api } from '../api.js';
import { field, h, replace, say } from '../dom.js';

export default function create(root, params, ctx) {
  const f = {
    name: h('input', { id: 'svc-name', required: true, autocomplete: 'off' }),
    image: h('input', { id: 'svc-image', required: true, autocomplete: 'off', placeholder: 'busybox:latest' }),
    mode: h('select', { id: 'svc-mode' }, ['replicated', 'global', 'replicated-job', 'global-job'].map((m) => h('option', { value: m, text: m }))),
    replicas: h('input', { id: 'svc-replicas', type: 'number', min: 0, value: 1 }),
    command: h('input', { id: 'svc-command', autocomplete: 'off', placeholder: 'sh -c "sleep 3600"' }),
    env: h('textarea', { id: 'svc-env', rows: 3, placeholder: 'KEY=value, one a line' }),
    ports: h('input', { id: 'svc-ports', placeholder: '8080:80, 53:53/udp' }),
    networks: h('input', { id: 'svc-networks', placeholder: 'network names, comma-separated' }),
    constraints: h('input', { id: 'svc-constraints', placeholder: 'node.role==worker, node.labels.zone==a' }),
    cpus: h('input', { id: 'svc-cpus', type: 'number', min: 0, step: 0.1, placeholder: 'reserved CPUs' }),
    memory: h('input', { id: 'svc-memory', type: 'number', min: 0, placeholder: 'reserved memory, MiB' }),
    strategy: h('select', { id: 'svc-strategy' }, h('option', { value: 'rolling', text: 'rolling' }), h('option', { value: 'blue-green', text: 'blue-green' })),
  };
  const splitList = (s) => s.split(',').map((x) => x.trim()).filter(Boolean);
  const words = (s) => (s.match(/"[^"]*"|'[^']*'|\S+/g) || []).map((w) => w.replace(/^["']|["']$/g, ''));
  function spec() {
    const mode = f.mode.value;
    const n = Number(f.replicas.value || 0);
    const Mode = mode === 'replicated' ? { Replicated: { Replicas: n } } : mode === 'global' ? { Global: {} }
      : mode === 'replicated-job' ? { ReplicatedJob: { MaxConcurrent: n || 1, TotalCompletions: n || 1 } } : { GlobalJob: {} };
    const ports = splitList(f.ports.value).map((p) => {
      const m = /^(?:(\d+):)?(\d+)(?:\/(tcp|udp|sctp))?$/.exec(p);
      if (!m) throw new Error(`port "${p}" is not [published:]target[/protocol]`);
      return { Protocol: m[3] || 'tcp', TargetPort: Number(m[2]), ...(m[1] ? { PublishedPort: Number(m[1]) } : {}) };
    });
    const res = {};
    if (f.cpus.value) res.NanoCPUs = Math.round(Number(f.cpus.value) * 1e9);
    if (f.memory.value) res.MemoryBytes = Math.round(Number(f.memory.value) * 1024 * 1024);
    const labels = f.strategy.value === 'blue-green' ? { 'shoal.update-strategy': 'blue-green' } : {};
    // The command goes in Args, as `docker service create IMAGE COMMAND...` puts it: the image's
    // entrypoint stays (Command would replace it).
    return {
      Name: f.name.value.trim(), Labels: labels, Mode,
      TaskTemplate: {
        ContainerSpec: { Image: f.image.value.trim(), ...(f.command.value.trim() ? { Args: words(f.command.value) } : {}),
          Env: f.env.value.split('\n').map((x) => x.trim()).filter(Boolean) },
        ...(Object.keys(res).length ? { Resources: { Reservations: res } } : {}),
        Placement: { Constraints: splitList(f.constraints.value) },
        Networks: splitList(f.networks.value).map((t) => ({ Target: t })),
      },
      EndpointSpec: { Ports: ports },
    };
  }
  const planBox = h('div#create-plan');
  const planBtn = h('button', { type: 'button', id: 'svc-plan' }, 'Where would it go?');
  planBtn.addEventListener('click', async () => {
    try {
      const plan = await api('/shoal/plan', { method: 'POST', body: spec() });
      replace(planBox, h('ul', {}, plan.map((p) => h('li', { text: `slot ${p.Slot}: ${p.Node || p.NodeID || 'no node'}${p.Reason ? ' — ' + p.Reason : ''}` }))));
    } catch (e) {
      say(`Plan: ${e.message}`, 'error');
    }
  });
  const form = h('form.create', { 'aria-label': 'Create a service' },
    h('div.grid2', {}, field('Name', f.name), field('Image', f.image), field('Mode', f.mode), field('Replicas / completions', f.replicas),
      field('Command', f.command), field('Published ports', f.ports), field('Networks', f.networks), field('Constraints', f.constraints),
      field('CPUs', f.cpus), field('Memory (MiB)', f.memory), field('Update strategy', f.strategy), field('Environment', f.env)),
    h('div.row', {}, planBtn, h('button.primary', { type: 'submit', id: 'svc-create' }, 'Create')), planBox);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const res = await api('/services/create', { method: 'POST', body: spec() });
      say(`Service ${f.name.value} created`);
      ctx.navigate(`#/services/${res.ID}`);
    } catch (err) {
      say(`Create: ${err.message}`, 'error');
    }
  });
  replace(root, h('h1', 'Create a service'), form);
  return { title: 'Create a service', root, kinds: [], async refresh() {} };
}
