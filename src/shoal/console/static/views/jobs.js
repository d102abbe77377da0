// Jobs (replicated-job / global-job services) and scheduled jobs (shoal.schedule* labels): their
// runs (JobIteration), last run and the current run's tasks; start a run now (`shoal job run`).
import { api } from '../api.js';
import { ago, h, link, replace, say, stateBadge, table } from '../dom.js';
import { updateService } from './service.js';

const isJob = (s) => !!(s.Spec.Mode?.ReplicatedJob || s.Spec.Mode?.GlobalJob);

export default function jobs(root) {
  const box = h('div');
  const runs = h('div');
  replace(root, h('h1', 'Jobs and schedules'), box, h('h2', 'Runs (current iteration\'s tasks)'), runs);
  return {
    title: 'Jobs', root, kinds: ['service', 'task'],
    async refresh() {
      const all = (await api('/services', { query: { filters: { mode: ['replicated-job', 'global-job'] } } }).catch(() => null))
        ?? (await api('/services')).filter(isJob);
      const jobs = all.filter(isJob).sort((a, b) => a.Spec.Name.localeCompare(b.Spec.Name));
      const tasks = jobs.length ? await Promise.all(jobs.map((j) => api('/tasks', { query: { filters: { service: [j.ID] } } }))) : [];
      const byJob = new Map(jobs.map((j, i) => [j.ID, tasks[i]]));
      const cur = (j) => (byJob.get(j.ID) || []).filter((t) => (t.JobIteration?.Index ?? 0) === (j.JobStatus?.JobIteration?.Index ?? 0));
      replace(box, table([
        { label: 'Job', cell: (j) => link(`#/services/${j.ID}`, j.Spec.Name) },
        { label: 'Mode', cell: (j) => (j.Spec.Mode.ReplicatedJob ? 'replicated-job' : 'global-job') },
        { label: 'Schedule', cell: (j) => { const l = j.Spec.Labels || {}; return l['shoal.schedule'] ? `${l['shoal.schedule']} ${l['shoal.schedule.timezone'] || 'UTC'}` : 'on demand'; } },
        { label: 'Run #', cell: (j) => String(j.JobStatus?.JobIteration?.Index ?? '') },
        { label: 'Last run', cell: (j) => ago(j.JobStatus?.LastExecution) || 'never' },
        { label: 'This run', cell: (j) => { const t = cur(j); return `${t.filter((x) => x.Status.State === 'complete').length} complete, ${t.filter((x) => x.Status.State === 'running').length} running, ${t.filter((x) => ['failed', 'rejected'].includes(x.Status.State)).length} failed`; } },
        { label: 'Run now', cell: (j) => h('button.small', { type: 'button', 'aria-label': `Run ${j.Spec.Name} now`,
          onclick: () => updateService(j.ID, (s) => { s.TaskTemplate.ForceUpdate = (s.TaskTemplate.ForceUpdate || 0) + 1; }, 'run started') }, 'Run now') },
      ], jobs, { caption: `${jobs.length} job(s)`, rowAttrs: (j) => ({ 'data-job': j.Spec.Name }) }));
      const rows = jobs.flatMap((j) => (byJob.get(j.ID) || []).map((t) => ({ j, t })))
        .sort((a, b) => (b.t.CreatedAt || '').localeCompare(a.t.CreatedAt || ''));
      replace(runs, table([
        { label: 'Job', cell: (r) => r.j.Spec.Name },
        { label: 'Run #', cell: (r) => String(r.t.JobIteration?.Index ?? '') },
        { label: 'Task', cell: (r) => link(`#/tasks/${r.t.ID}`, r.t.ID.slice(0, 12)) },
        { label: 'State', cell: (r) => stateBadge(r.t.Status.State) },
        { label: 'Exit', cell: (r) => String(r.t.Status.ContainerStatus?.ExitCode ?? '') },
        { label: 'When', cell: (r) => ago(r.t.Status.Timestamp) },
      ], rows, { caption: 'Tasks of every job, newest first', pageSize: 50 }));
      if (!jobs.length) say('No jobs yet: `shoal job create` or a Compose service with mode: replicated-job');
    },
  };
}
