// The API, from the browser: same origin, the session cookie, and the CSRF header on every write.

export class ApiError extends Error {
  constructor(status, message, data) {
    super(message);
    this.status = status;
    this.data = data || {};
  }
}

/** fetch a path of the API; JSON in and out. A write always carries X-Shoal-Console: 1. */
export async function api(path, { method = 'GET', body, text, query, signal, raw = false } = {}) {
  const headers = {};
  if (method !== 'GET' && method !== 'HEAD') headers['X-Shoal-Console'] = '1';
  let payload;
  if (text !== undefined) { headers['Content-Type'] = 'application/x-yaml'; payload = text; }
  else if (body !== undefined) { headers['Content-Type'] = 'application/json'; payload = JSON.stringify(body); }
  let url = path;
  if (query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v === undefined || v === null) continue;
      q.set(k, typeof v === 'object' ? JSON.stringify(v) : String(v));
    }
    url += (url.includes('?') ? '&' : '?') + q;
  }
  const resp = await fetch(url, { method, headers, body: payload, credentials: 'same-origin', signal });
  if (raw && resp.ok) return resp;
  const ctype = resp.headers.get('Content-Type') || '';
  const data = resp.status === 204 ? null : ctype.includes('json') ? await resp.json().catch(() => null) : await resp.text();
  if (!resp.ok) {
    const msg = (data && data.message) || (typeof data === 'string' && data) || `${resp.status} ${resp.statusText}`;
    if (resp.status === 401) window.dispatchEvent(new CustomEvent('shoal-unauthorized', { detail: msg }));
    throw new ApiError(resp.status, msg, data && typeof data === 'object' ? data : {});
  }
  return data;
}

/** A console aggregate route, or — until the daemon has it (404) — the same shape computed from
 * the plain routes (fine for small clusters; the aggregate is what a 1,000-node cluster needs). */
const missing = new Set();
export async function aggregate(path, fallback) {
  if (!missing.has(path)) {
    try {
      return await api(path);
    } catch (e) {
      if (e.status !== 404) throw e;
      missing.add(path);
    }
  }
  return fallback();
}

export const STACK_LABEL = 'com.docker.stack.namespace';

/** Replicated (or job) counts of a service from the API's ?status=1 answer. */
export function replicaCounts(svc) {
  const st = svc.ServiceStatus || {};
  return { running: st.RunningTasks || 0, desired: st.DesiredTasks || 0, completed: st.CompletedTasks || 0 };
}

export function modeOf(spec) {
  const m = spec.Mode || {};
  if (m.Replicated) return 'replicated';
  if (m.Global) return 'global';
  if (m.ReplicatedJob) return 'replicated-job';
  if (m.GlobalJob) return 'global-job';
  return 'replicated';
}

export function portsOf(svc) {
  const ports = (svc.Endpoint && svc.Endpoint.Ports) || (svc.Spec.EndpointSpec && svc.Spec.EndpointSpec.Ports) || [];
  return ports.map((p) => `${p.PublishedPort || ''}:${p.TargetPort}/${p.Protocol || 'tcp'}${p.PublishMode === 'host' ? ' (host)' : ''}`);
}

/** /shoal/console/services' row, from a /services?status=1 entry (the fallback). */
export function serviceRow(svc, networks) {
  const spec = svc.Spec;
  const c = replicaCounts(svc);
  const nets = (spec.TaskTemplate.Networks || spec.Networks || []).map((n) => (networks && networks[n.Target]) || n.Target);
  return {
    ID: svc.ID, Name: spec.Name, Stack: (spec.Labels || {})[STACK_LABEL] || '', Mode: modeOf(spec),
    Image: (spec.TaskTemplate.ContainerSpec || {}).Image || '', Running: c.running, Desired: c.desired,
    UpdateState: (svc.UpdateStatus && svc.UpdateStatus.State) || '', Ports: portsOf(svc), Networks: nets, Pending: null,
  };
}

export async function consoleServices() {
  return aggregate('/shoal/console/services', async () => {
    const [svcs, nets] = await Promise.all([api('/services', { query: { status: 1 } }), api('/networks').catch(() => [])]);
    const names = Object.fromEntries(nets.map((n) => [n.Id || n.ID, n.Name]));
    return svcs.map((s) => serviceRow(s, names));
  });
}

export const imageShort = (image) => (image || '').replace(/@sha256:[0-9a-f]+$/, '');
