// One stack: its services, its status (services waiting on depends_on), its Compose file; remove it.
import { api, consoleServices } from '../api.js';
import { confirmDialog, dl, h, replace, say, table } from '../dom.js';
import { serviceColumns } from './services.js';

export default function stack(root, params, ctx) {
  const name = params.name;
  const info = h('div');
  const list = h('div');
  const file = h('details', {}, h('summary', 'Compose file'), h('pre.code'));
  const remove = h('button.danger', { type: 'button', id: 'remove-stack' }, 'Remove stack');
  remove.addEventListener('click', async () => {
    if (!(await confirmDialog(`Remove stack ${name}: all its services, networks, secrets and configs?`, 'Remove'))) return;
    try {
      await api(`/shoal/stacks/${encodeURIComponent(name)}`, { method: 'DELETE' });
      say(`stack ${name} removed`);
      ctx.navigate('#/stacks');
    } catch (e) {
      say(`Remove failed: ${e.message}`, 'error');
    }
  });
  const redeploy = h('a.button', { href: `#/deploy?name=${encodeURIComponent(name)}` }, 'Deploy a new version');
  replace(root, h('h1', { text: `Stack ${name}` }), info, h('div.row', {}, redeploy, remove), h('h2', 'Services'), list, file);
  const state = {};
  return {
    title: `Stack ${name}`, root, kinds: ['stack', 'service', 'task'],
    async refresh() {
      const [st, svcs] = await Promise.all([api(`/shoal/stacks/${encodeURIComponent(name)}`).catch(() => null), consoleServices()]);
      const mine = svcs.filter((s) => s.Stack === name).sort((a, b) => a.Name.localeCompare(b.Name));
      const status = st?.Status || {};
      replace(info, dl([
        ['Services', String(mine.length)],
        st ? ['Version', String(st.Version?.Index ?? '')] : ['Known by', 'labels only (deployed by the docker CLI)'],
        (status.Pending || []).length ? ['Waiting', (status.Pending || []).map((p) => (typeof p === 'string' ? p : `${p.Name || ''} ${p.Reason || ''}`)).join('; ')] : null,
        status.Message ? ['Status', status.Message] : null,
      ]));
      replace(list, table(serviceColumns(), mine, { caption: `${mine.length} service(s)`, state, rowAttrs: (s) => ({ 'data-service': s.Name }) }));
      const compose = st?.Spec?.Compose || st?.Spec?.ComposeFile || '';
      file.hidden = !compose;
      file.querySelector('pre').textContent = typeof compose === 'string' ? compose : JSON.stringify(compose, null, 2);
    },
  };
}
