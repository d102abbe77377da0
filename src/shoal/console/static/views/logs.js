// Live logs of a service: tail, follow, filter (client-side, over what is on screen), stderr marked.
import { api, consoleServices } from '../api.js';
import { field, h, replace, say } from '../dom.js';
import { readLogs } from '../logstream.js';

const MAX_LINES = 5000; // what the page keeps; older lines scroll away

export default function logs(root, params, ctx) {
  const svcSel = h('select', { id: 'logs-service' }, h('option', { value: '', text: '— choose a service —' }));
  const tail = h('input', { type: 'number', id: 'logs-tail', min: 0, max: 10000, value: 200 });
  const follow = h('input', { type: 'checkbox', id: 'logs-follow', checked: true });
  const filter = h('input', { type: 'search', id: 'logs-filter', placeholder: 'text or /regex/' });
  const out = h('pre#logs-output.logs', { tabindex: 0, 'aria-label': 'Log lines', 'aria-live': 'off' });
  const stateText = h('span#logs-state.muted');
  let controller = null;
  let lines = [];
  let names = {};

  const matcher = () => {
    const q = filter.value;
    if (!q) return () => true;
    const m = /^\/(.*)\/([a-z]*)$/.exec(q);
    if (m) {
      try { const re = new RegExp(m[1], m[2]); return (l) => re.test(l.text); } catch { /* a literal then */ }
    }
    const low = q.toLowerCase();
    return (l) => l.text.toLowerCase().includes(low);
  };
  const label = (l) => {
    const t = l.details['com.docker.swarm.task.id'] || '';
    return names[t] || t.slice(0, 12);
  };
  const render = (l) => h(`span.line${l.stream === 'stderr' ? '.stderr' : ''}`, {},
    h('span.ts', { text: l.ts ? l.ts.slice(11, 23) + ' ' : '' }), h('span.src', { text: label(l) ? label(l) + ' | ' : '' }), l.text, '\n');
  const redraw = () => {
    const ok = matcher();
    replace(out, lines.filter(ok).map(render));
    out.scrollTop = out.scrollHeight;
  };
  const addLines = (more) => {
    lines.push(...more);
    if (lines.length > MAX_LINES) lines = lines.slice(-MAX_LINES);
    const ok = matcher();
    const stick = out.scrollTop + out.clientHeight >= out.scrollHeight - 20;
    out.append(...more.filter(ok).map(render));
    while (out.childNodes.length > MAX_LINES) out.firstChild.remove();
    if (stick) out.scrollTop = out.scrollHeight;
  };

  async function start() {
    if (controller) controller.abort();
    lines = [];
    replace(out);
    const id = svcSel.value;
    if (!id) return;
    controller = new AbortController();
    const mine = controller;
    stateText.textContent = follow.checked ? 'following…' : 'reading…';
    try {
      const tasks = await api('/tasks', { query: { filters: { service: [id] } } });
      names = Object.fromEntries(tasks.map((t) => [t.ID, `${svcSel.selectedOptions[0].textContent}.${t.Slot || t.NodeID.slice(0, 12)}`]));
      await readLogs(`/services/${id}/logs`, { tail: String(tail.value || 'all'), follow: follow.checked ? '1' : '0' }, addLines, mine.signal);
      if (mine === controller) stateText.textContent = `${lines.length} line(s), end of logs`;
    } catch (e) {
      if (e.name === 'AbortError') return;
      stateText.textContent = '';
      say(`Logs: ${e.message}`, 'error');
    }
  }

  svcSel.addEventListener('change', () => { if (svcSel.value) ctx.navigate(`#/logs/${svcSel.value}`); });
  follow.addEventListener('change', start);
  tail.addEventListener('change', start);
  filter.addEventListener('input', redraw);
  replace(root, h('h1', 'Logs'),
    h('div.toolbar', {}, field('Service', svcSel), field('Tail', tail), h('label.check', {}, follow, ' Follow'), field('Filter', filter), stateText),
    out);
  let started = false;
  return {
    title: 'Logs', root, kinds: ['service'],
    async refresh() {
      const svcs = (await consoleServices()).sort((a, b) => a.Name.localeCompare(b.Name));
      const cur = params.service || svcSel.value;
      replace(svcSel, h('option', { value: '', text: '— choose a service —' }),
        svcs.map((s) => h('option', { value: s.ID, text: s.Name, selected: s.ID === cur || s.Name === cur })));
      if (!started && cur) {
        started = true;
        const match = svcs.find((s) => s.ID === cur || s.Name === cur);
        if (match) svcSel.value = match.ID;
        start();
      }
    },
    dispose() { if (controller) controller.abort(); },
  };
}
