// Live pages: the console's SSE stream says which kinds changed; the page on screen re-fetches
// (at most twice a second). Without the stream (an older daemon, a proxy that buffers), poll.

const MIN_GAP_MS = 500;
const POLL_MS = 5000;

export class Live {
  constructor(onRefresh, indicator) {
    this.onRefresh = onRefresh; // (kinds: Set<string> | null) => Promise — null: everything
    this.indicator = indicator;
    this.pending = new Set();
    this.all = false;
    this.timer = 0;
    this.running = false;
    this.last = 0;
    this.es = null;
    this.poll = 0;
  }

  start() {
    try {
      this.es = new EventSource('/shoal/console/stream', { withCredentials: true });
    } catch {
      this.es = null;
    }
    if (this.es) {
      this.es.addEventListener('change', (e) => {
        let msg = {};
        try { msg = JSON.parse(e.data); } catch { /* a malformed batch: refresh everything */ }
        const kinds = Array.isArray(msg.kinds) ? msg.kinds : null;
        this.request(kinds);
      });
      this.es.addEventListener('open', () => this.mark());
      this.es.addEventListener('error', () => this.mark());
    }
    // Polling runs whenever the stream is not open (never opened, or reconnecting).
    this.poll = setInterval(() => { if (!this.streaming()) this.request(null); }, POLL_MS);
    this.mark();
  }

  streaming() {
    return !!this.es && this.es.readyState === EventSource.OPEN;
  }

  mark() {
    if (!this.indicator) return;
    const on = this.streaming();
    this.indicator.className = `live ${on ? 'on' : 'off'}`;
    this.indicator.title = on ? 'Live: updates as the cluster changes' : 'Polling every 5 s (no live stream)';
    this.indicator.dataset.mode = on ? 'stream' : 'poll';
  }

  /** Ask for a refresh for these kinds (null: all); coalesced and throttled. */
  request(kinds) {
    if (kinds === null) this.all = true; else kinds.forEach((k) => this.pending.add(k));
    if (this.timer || this.running) return;
    const wait = Math.max(0, this.last + MIN_GAP_MS - Date.now());
    this.timer = setTimeout(() => this.flush(), wait);
  }

  async flush() {
    this.timer = 0;
    const kinds = this.all ? null : new Set(this.pending);
    this.pending.clear();
    this.all = false;
    this.running = true;
    this.last = Date.now();
    try {
      await this.onRefresh(kinds);
    } finally {
      this.running = false;
      if (this.all || this.pending.size) this.request([]);
    }
  }
}
