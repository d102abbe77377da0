// Deploy a stack from a Compose file (pasted or uploaded): preview first (the dry run's changes and
// the placement plan), then confirm. The server converts the file (POST /shoal/console/deploy) and
// answers an error with the line it is at, which is marked in the editor.
import { api } from '../api.js';
import { field, h, replace, say, table } from '../dom.js';

export default function deploy(root, params, ctx) {
  const name = h('input', { id: 'stack-name', required: true, pattern: '[a-zA-Z0-9][a-zA-Z0-9_.\\-]*', autocomplete: 'off', value: params.name || '' });
  const prune = h('input', { type: 'checkbox', id: 'stack-prune' });
  const upload = h('input', { type: 'file', id: 'compose-upload', accept: '.yml,.yaml,text/yaml,application/x-yaml' });
  const text = h('textarea', { id: 'compose-text', rows: 18, spellcheck: 'false', wrap: 'off', placeholder: 'services:\n  web:\n    image: busybox\n' });
  const gutter = h('div.gutter', { 'aria-hidden': 'true' });
  const errorBox = h('div#deploy-error.error', { role: 'alert' });
  const preview = h('div#deploy-preview');
  const previewBtn = h('button', { type: 'submit', id: 'deploy-preview-btn' }, 'Preview (dry run)');
  const confirmBtn = h('button.primary', { type: 'button', id: 'deploy-confirm', disabled: true }, 'Deploy');
  let previewed = null; // the exact text + name the preview was for

  const lines = () => {
    const n = text.value.split('\n').length;
    const bad = Number(errorBox.dataset.line || 0);
    replace(gutter, Array.from({ length: n }, (_, i) => h(`span${i + 1 === bad ? '.bad' : ''}`, { text: String(i + 1) })));
    gutter.scrollTop = text.scrollTop;
  };
  text.addEventListener('input', () => { previewed = null; confirmBtn.disabled = true; lines(); });
  text.addEventListener('scroll', () => { gutter.scrollTop = text.scrollTop; });
  name.addEventListener('input', () => { previewed = null; confirmBtn.disabled = true; });
  upload.addEventListener('change', async () => {
    const f = upload.files[0];
    if (!f) return;
    if (f.size > 4 * 1024 * 1024) { say('That file is over 4 MiB: not a Compose file Shoal will take', 'error'); return; }
    text.value = await f.text();
    if (!name.value) name.value = f.name.replace(/\.(ya?ml)$/, '').replace(/^(docker-)?compose$/, '').replace(/[^a-zA-Z0-9_.-]/g, '');
    text.dispatchEvent(new Event('input'));
  });

  function showError(e) {
    const line = e.data && Number(e.data.line);
    errorBox.dataset.line = line ? String(line) : '';
    replace(errorBox, h('strong', { text: line ? `Line ${line}${e.data.column ? `, column ${e.data.column}` : ''}: ` : 'Error: ' }), e.message);
    lines();
    if (line) {
      const starts = text.value.split('\n').slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0);
      const end = starts + (text.value.split('\n')[line - 1] || '').length;
      text.focus();
      text.setSelectionRange(starts, end);
      const lh = parseFloat(getComputedStyle(text).lineHeight) || 18;
      text.scrollTop = Math.max(0, (line - 4) * lh);
    }
    say(`Deploy: ${e.message}`, 'error');
  }

  async function send(dryRun) {
    replace(errorBox);
    delete errorBox.dataset.line;
    lines();
    if (!name.value.trim()) { say('Name the stack', 'error'); name.focus(); return null; }
    const query = { name: name.value.trim() };
    if (dryRun) query.dryRun = 1;
    if (prune.checked) query.prune = 1;
    try {
      return await api('/shoal/console/deploy', { method: 'POST', text: text.value, query });
    } catch (e) {
      if (e.status === 404 && !e.data.line && /page not found/.test(e.message)) {
        e.message = 'this daemon has no console deploy route yet (POST /shoal/console/deploy); deploy with `shoal stack deploy`';
      }
      showError(e);
      return null;
    }
  }

  const form = h('form.deploy', { 'aria-label': 'Deploy a stack' },
    h('div.row', {}, field('Stack name', name), field('Upload a Compose file', upload), h('label.check', {}, prune, ' Remove services no longer in the file (prune)')),
    h('label.field.wide', { for: 'compose-text' }, h('span.label', 'Compose file')),
    h('div.editor', {}, gutter, text),
    errorBox,
    h('div.row', {}, previewBtn, confirmBtn));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    previewBtn.disabled = true;
    const res = await send(true);
    previewBtn.disabled = false;
    if (!res) { replace(preview); return; }
    previewed = { text: text.value, name: name.value };
    confirmBtn.disabled = false;
    replace(preview, ...renderPreview(res));
    say(`Preview of ${name.value}: ${(res.Changes || []).length} change(s); confirm to deploy`);
    confirmBtn.focus();
  });
  confirmBtn.addEventListener('click', async () => {
    if (!previewed || previewed.text !== text.value || previewed.name !== name.value) { say('Preview again: the file changed', 'error'); return; }
    confirmBtn.disabled = true;
    const res = await send(false);
    if (!res) { confirmBtn.disabled = false; return; }
    say(`Stack ${name.value} deployed`);
    ctx.navigate(`#/stacks/${encodeURIComponent(name.value.trim())}`);
  });
  replace(root, h('h1', 'Deploy a stack'), h('p.muted', 'Paste or upload a Compose file. The preview shows what would change and where each task would go; nothing is written until you confirm.'),
    form, preview);
  lines();
  if (params.name) {
    api(`/shoal/stacks/${encodeURIComponent(params.name)}`).then((st) => {
      if (!text.value && st.Spec?.Compose) { text.value = st.Spec.Compose; lines(); }
    }).catch(() => {});
  }
  return { title: 'Deploy a stack', root, kinds: [], async refresh() {} };
}

function renderPreview(res) {
  const changes = res.Changes || [];
  const plans = Object.entries(res.Plans || {});
  return [
    h('h2', 'Changes'),
    table([
      { label: 'Action', cell: (c) => h(`span.badge.${c.Action === 'remove' ? 'bad' : c.Action === 'create' ? 'ok' : 'warn'}`, { text: c.Action }) },
      { label: 'Kind', cell: (c) => c.Kind },
      { label: 'Name', cell: (c) => c.Name },
      { label: 'Detail', cell: (c) => (Array.isArray(c.Detail) ? c.Detail.join('; ') : c.Detail || '') },
    ], changes, { caption: 'What the deploy would do', empty: 'Nothing to change', rowAttrs: (c) => ({ 'data-change': `${c.Action}:${c.Kind}:${c.Name}` }) }),
    (res.Warnings || []).length ? h('ul.warnings', {}, res.Warnings.map((w) => h('li', { text: w }))) : null,
    h('h2', 'Placement plan'),
    plans.length ? h('div#deploy-plan', {}, plans.map(([svc, ps]) => table([
      { label: 'Slot', cell: (p) => String(p.Slot) },
      { label: 'Node', cell: (p) => p.Node || (p.NodeID ? p.NodeID.slice(0, 12) : '—') },
      { label: 'Note', cls: 'err', cell: (p) => p.Reason || '' },
    ], ps, { caption: svc }))) : h('p#deploy-plan.muted', 'No new or changed service to place.'),
  ];
}
