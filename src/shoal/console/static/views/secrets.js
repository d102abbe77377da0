// Secrets and configs: names, labels and dates only (never their data).
import { api } from '../api.js';
import { ago, h, replace, table } from '../dom.js';

export default function secrets(root) {
  const sBox = h('div');
  const cBox = h('div');
  replace(root, h('h1', 'Secrets and configs'), h('h2', 'Secrets'), sBox, h('h2', 'Configs'), cBox);
  const cols = [
    { label: 'Name', cell: (o) => o.Spec.Name },
    { label: 'Stack', cell: (o) => (o.Spec.Labels || {})['com.docker.stack.namespace'] || '' },
    { label: 'Created', cell: (o) => ago(o.CreatedAt) },
    { label: 'Updated', cell: (o) => ago(o.UpdatedAt) },
  ];
  return {
    title: 'Secrets and configs', root, kinds: ['secret', 'config'],
    async refresh() {
      const [s, c] = await Promise.all([
        api('/secrets').catch((e) => (e.status === 403 ? null : Promise.reject(e))), api('/configs')]);
      replace(sBox, s === null ? h('p.muted', 'Your role may not list secrets.') : table(cols, s, { caption: `${s.length} secret(s)` }));
      replace(cBox, table(cols, c, { caption: `${c.length} config(s)` }));
    },
  };
}
