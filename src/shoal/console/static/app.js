// The console's shell: top bar, navigation, hash routes, and live refresh of the view on screen.
import { api } from './api.js';
import { h, replace, say } from './dom.js';
import { Live } from './live.js';

const ROUTES = [
  [/^overview$/, 'overview'],
  [/^visualizer$/, 'visualizer'],
  [/^nodes$/, 'nodes'],
  [/^nodes\/([^/]+)$/, 'node', ['id']],
  [/^services$/, 'services'],
  [/^services\/([^/]+)$/, 'service', ['id']],
  [/^stacks$/, 'stacks'],
  [/^stacks\/([^/]+)$/, 'stack', ['name']],
  [/^tasks\/([^/]+)$/, 'task', ['id']],
  [/^jobs$/, 'jobs'],
  [/^logs$/, 'logs'],
  [/^logs\/([^/]+)$/, 'logs', ['service']],
  [/^events$/, 'events'],
  [/^secrets$/, 'secrets'],
  [/^deploy$/, 'deploy'],
  [/^create$/, 'create'],
];

const main = document.getElementById('main');
let current = null; // {name, view, params}
let seq = 0;

function parse(hash) {
  const raw = decodeURIComponent((hash || '').replace(/^#\/?/, '')) || 'overview';
  const [path, qs] = raw.split('?');
  for (const [re, name, keys = []] of ROUTES) {
    const m = re.exec(path);
    if (m) {
      const params = Object.fromEntries(keys.map((k, i) => [k, m[i + 1]]));
      for (const [k, v] of new URLSearchParams(qs || '')) params[k] = v;
      return { name, params };
    }
  }
  return { name: 'notfound', params: { path } };
}

async function route() {
  const mine = ++seq;
  const { name, params } = parse(location.hash);
  if (current && current.view.dispose) current.view.dispose();
  current = null;
  for (const a of document.querySelectorAll('#nav a')) {
    const on = a.getAttribute('href') === `#/${name}` || a.getAttribute('href') === `#/${name}s`;
    if (on) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  closeNav();
  if (name === 'notfound') {
    replace(main, h('h1', 'Not found'), h('p', {}, 'No page here: ', h('a', { href: '#/overview' }, 'go to the overview')));
    return;
  }
  const root = h('section.view', { 'data-view': name });
  replace(main, root);
  let mod;
  try {
    mod = await import(`./views/${name}.js`);
  } catch (e) {
    replace(root, h('p.error', { text: `Could not load this page: ${e.message}` }));
    return;
  }
  if (mine !== seq) return;
  const view = mod.default(root, params, { navigate: (hash) => { location.hash = hash; }, say });
  current = { name, view, params };
  document.title = `${view.title || name} · Shoal`;
  await refresh(null, true);
  if (mine === seq && !main.contains(document.activeElement)) main.focus({ preventScroll: true });
}

/** Re-fetch the view on screen if it shows one of ``kinds`` (null: whatever it shows). */
async function refresh(kinds, first = false) {
  const cur = current;
  if (!cur) return;
  if (!first && kinds && cur.view.kinds && !cur.view.kinds.some((k) => kinds.has(k))) return;
  try {
    await cur.view.refresh(first);
    if (cur === current) cur.view.root?.removeAttribute?.('aria-busy');
  } catch (e) {
    if (cur !== current) return;
    if (e.status === 401) return; // the login page took over
    say(`${cur.view.title || cur.name}: ${e.message}`, 'error');
  }
}

function closeNav() {
  document.body.classList.remove('nav-open');
  document.getElementById('nav-toggle').setAttribute('aria-expanded', 'false');
}

function loginPage(msg) {
  if (current && current.view.dispose) current.view.dispose();
  current = null;
  document.getElementById('user').textContent = '';
  replace(main, h('section.login', {},
    h('h1', 'Log in to the Shoal console'),
    h('p', {}, 'This browser has no console session (or it expired). On a machine whose ', h('code', 'shoal'),
      ' CLI can reach the cluster, run:'),
    h('pre', h('code', 'shoal console --url')),
    h('p', 'and open the address it prints: it logs this browser in once, as that user.'),
    msg ? h('p.muted', { text: `(${msg})` }) : null));
}

async function topbar() {
  try {
    const who = await api('/shoal/whoami');
    document.getElementById('user').textContent = `${who.Name} (${who.Role})`;
    document.body.dataset.role = who.Role;
  } catch (e) {
    if (e.status === 401) return false;
  }
  api('/swarm').then((sw) => {
    const name = (sw.Spec && sw.Spec.Name) || 'swarm';
    document.getElementById('cluster').textContent = `${name} · ${(sw.ID || '').slice(0, 10)}`;
  }).catch(() => { document.getElementById('cluster').textContent = 'not in a swarm'; });
  return true;
}

async function start() {
  // The skip link moves the focus to the page, not the hash (a hash is a route here: "#main" is none).
  document.querySelector('a.skip').addEventListener('click', (e) => {
    e.preventDefault();
    main.focus();
  });
  document.getElementById('nav-toggle').addEventListener('click', () => {
    const open = document.body.classList.toggle('nav-open');
    document.getElementById('nav-toggle').setAttribute('aria-expanded', String(open));
  });
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && document.body.classList.contains('nav-open')) closeNav();
  });
  window.addEventListener('shoal-unauthorized', (e) => loginPage(e.detail));
  if (!(await topbar())) {
    loginPage('');
    return;
  }
  const live = new Live((kinds) => refresh(kinds), document.getElementById('live'));
  live.start();
  window.addEventListener('hashchange', route);
  await route();
}

start();
