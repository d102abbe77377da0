// The cluster's events as they happen (the swarm's; the engines' with "all sources").
import { field, h, replace, say } from '../dom.js';
import { eventText, eventTime } from './overview.js';

const MAX = 1000;

export default function events(root) {
  const type = h('select', { id: 'events-type' }, ['', 'service', 'node', 'network', 'secret', 'config', 'container', 'image', 'volume']
    .map((t) => h('option', { value: t, text: t || 'all types' })));
  const engines = h('input', { type: 'checkbox', id: 'events-engines' });
  const list = h('ol#events-list.events', { 'aria-live': 'off' });
  let controller = null;

  async function start() {
    if (controller) controller.abort();
    controller = new AbortController();
    const mine = controller;
    replace(list);
    const filters = {};
    if (type.value) filters.type = [type.value];
    if (!engines.checked && !['container', 'image', 'volume'].includes(type.value)) filters.scope = ['swarm'];
    const since = Math.floor(Date.now() / 1000) - 600;
    try {
      const resp = await fetch(`/events?since=${since}&filters=${encodeURIComponent(JSON.stringify(filters))}`,
        { credentials: 'same-origin', signal: mine.signal });
      if (!resp.ok) throw new Error((await resp.json().catch(() => ({}))).message || resp.statusText);
      const reader = resp.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        const parts = buf.split('\n');
        buf = parts.pop();
        for (const p of parts) {
          if (!p.trim()) continue;
          let ev;
          try { ev = JSON.parse(p); } catch { continue; }
          list.prepend(h('li', {}, h('time', { text: eventTime(ev) }), ' ', eventText(ev)));
          while (list.childNodes.length > MAX) list.lastChild.remove();
        }
      }
    } catch (e) {
      if (e.name !== 'AbortError') say(`Events: ${e.message}`, 'error');
    }
  }
  type.addEventListener('change', start);
  engines.addEventListener('change', start);
  replace(root, h('h1', 'Events'), h('div.toolbar', {}, field('Type', type), h('label.check', {}, engines, ' Engine events too (containers, images …)')),
    h('p.muted', 'Newest first; the last 10 minutes, then live.'), list);
  start();
  return { title: 'Events', root, kinds: [], async refresh() {}, dispose() { if (controller) controller.abort(); } };
}
