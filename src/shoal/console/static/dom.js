// DOM helpers. Every string from the cluster goes in as a text node or an attribute value, never
// as HTML: a service name like "<img onerror=...>" stays text.

/** h('tag.class#id', {attr: value, onclick: fn}, ...children) → an element. */
export function h(sel, attrs, ...children) {
  const [, tag = 'div', rest = ''] = /^([a-z0-9]*)(.*)$/i.exec(sel);
  const el = document.createElement(tag || 'div');
  for (const m of rest.matchAll(/([.#])([\w-]+)/g)) {
    if (m[1] === '.') el.classList.add(m[2]); else el.id = m[2];
  }
  if (attrs && (typeof attrs !== 'object' || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = String(v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'style') for (const [p, pv] of Object.entries(v)) el.style.setProperty(p, pv); // CSSOM: allowed by the CSP
    else if (k === 'value') el.value = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function replace(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}

let statusTimer = 0;
/** A message in the aria-live region (screen readers announce it). */
export function say(msg, kind = 'info') {
  const el = document.getElementById('status');
  el.className = `status ${kind}`;
  el.textContent = msg;
  clearTimeout(statusTimer);
  if (kind !== 'error') statusTimer = setTimeout(() => { el.textContent = ''; el.className = 'status'; }, 6000);
}

export const short = (id) => (id || '').slice(0, 12);

export function ago(ts) {
  if (!ts) return '';
  const t = Date.parse(ts);
  if (Number.isNaN(t) || t <= 0) return '';
  const s = Math.max(0, (Date.now() - t) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function bytes(n) {
  if (!n) return '0';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(n < 10 && i ? 1 : 0)} ${units[i]}`;
}

export const cpus = (nano) => `${+(nano / 1e9).toFixed(2)}`;

export function badge(text, kind = '') {
  return h(`span.badge${kind ? '.' + kind : ''}`, { text });
}

export function stateKind(state) {
  return { running: 'ok', complete: 'ok', ready: 'ok', active: 'ok', completed: 'ok', healthy: 'ok',
    failed: 'bad', rejected: 'bad', down: 'bad', orphaned: 'bad', unhealthy: 'bad', rollback_paused: 'bad', paused: 'warn',
    pending: 'warn', assigned: 'warn', preparing: 'warn', starting: 'warn', updating: 'warn', drain: 'warn',
    pause: 'warn', unknown: 'warn', disconnected: 'bad', rollback_started: 'warn', rollback_completed: 'warn' }[state] || '';
}

export const stateBadge = (state) => badge(state || '—', stateKind(state));

/**
 * A table of rows, paged (long lists — 1,000 nodes — draw one page of DOM, not all).
 * columns: [{label, cell: row => Node|string, cls}]; opts: {caption, pageSize, rowAttrs, empty}.
 * The pager keeps its page across redraws via `state` (an object the caller keeps).
 */
export function table(columns, rows, opts = {}) {
  const size = opts.pageSize || 100;
  const state = opts.state || {};
  const pages = Math.max(1, Math.ceil(rows.length / size));
  state.page = Math.min(state.page || 0, pages - 1);
  const wrap = h('div.table-wrap');
  const draw = () => {
    const start = state.page * size;
    const body = rows.slice(start, start + size).map((r) => {
      const tr = h('tr', opts.rowAttrs ? opts.rowAttrs(r) : {});
      for (const c of columns) {
        const v = c.cell(r);
        tr.append(h(`td${c.cls ? '.' + c.cls : ''}`, { 'data-label': c.label }, v === undefined || v === null ? '' : v));
      }
      return tr;
    });
    const tbl = h('table', {},
      opts.caption ? h('caption', { text: opts.caption }) : null,
      h('thead', h('tr', columns.map((c) => h('th', { scope: 'col', text: c.label })))),
      h('tbody', body.length ? body : h('tr', h('td', { colspan: columns.length, class: 'empty', text: opts.empty || 'None' }))));
    const pager = pages > 1 ? h('div.pager', { role: 'navigation', 'aria-label': `${opts.caption || 'Table'} pages` },
      h('button', { type: 'button', disabled: state.page === 0, onclick: () => { state.page--; draw(); } }, '‹ Previous'),
      h('span', { text: `${start + 1}–${Math.min(start + size, rows.length)} of ${rows.length}` }),
      h('button', { type: 'button', disabled: state.page >= pages - 1, onclick: () => { state.page++; draw(); } }, 'Next ›'))
      : null;
    replace(wrap, tbl, pager);
  };
  draw();
  return wrap;
}

/** A labelled form control: <label>text <input ...></label> (every control has a label). */
export function field(labelText, control, hint) {
  return h('label.field', {}, h('span.label', { text: labelText }), control, hint ? h('small.hint', { text: hint }) : null);
}

export function link(href, text) {
  return h('a', { href, text });
}

/** A definition list from [[term, value], ...]. */
export function dl(pairs, cls = '') {
  return h(`dl${cls ? '.' + cls : ''}`, {}, pairs.filter(Boolean).map(([k, v, attrs]) => [h('dt', { text: k }), h('dd', attrs || {}, v)]));
}

/** Ask before a destructive action; a real <dialog> keeps the keyboard focus inside it. */
export function confirmDialog(message, okText = 'Confirm') {
  return new Promise((resolve) => {
    const ok = h('button.danger', { type: 'button' }, okText);
    const cancel = h('button', { type: 'button' }, 'Cancel');
    const dlg = h('dialog.confirm', { 'aria-labelledby': 'confirm-text' }, h('p#confirm-text', { text: message }),
      h('div.actions', {}, cancel, ok));
    const done = (v) => { dlg.close(); dlg.remove(); resolve(v); };
    ok.addEventListener('click', () => done(true));
    cancel.addEventListener('click', () => done(false));
    dlg.addEventListener('cancel', (e) => { e.preventDefault(); done(false); });
    document.body.append(dlg);
    dlg.showModal();
    cancel.focus();
  });
}
