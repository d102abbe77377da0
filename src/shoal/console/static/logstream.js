// Docker's log streams in the browser: /services/{id}/logs and /tasks/{id}/logs answer stdcopy
// frames (8-byte header: stream, 0, 0, 0, big-endian length; then that many bytes), or raw bytes
// for a TTY service. Each frame here is one line: "[<timestamp> ][<details> ]<text>\n".

/** Split a byte stream into frames; feed() returns the complete ones, keeping a partial tail. */
export class FrameDecoder {
  constructor() {
    this.buf = new Uint8Array(0);
    this.raw = null; // unknown until the first bytes: a frame header starts 0/1/2, 0, 0, 0
    this.text = new TextDecoder();
  }

  feed(chunk) {
    const joined = new Uint8Array(this.buf.length + chunk.length);
    joined.set(this.buf);
    joined.set(chunk, this.buf.length);
    this.buf = joined;
    if (this.raw === null && this.buf.length >= 4) {
      const b = this.buf;
      this.raw = !(b[0] <= 2 && b[1] === 0 && b[2] === 0 && b[3] === 0);
    }
    const out = [];
    if (this.raw === null) return out;
    if (this.raw) {
      const s = this.text.decode(this.buf, { stream: true });
      this.buf = new Uint8Array(0);
      this.pendingRaw = (this.pendingRaw || '') + s;
      const lines = this.pendingRaw.split('\n');
      this.pendingRaw = lines.pop();
      for (const l of lines) out.push({ stream: 'stdout', line: l });
      return out;
    }
    let off = 0;
    const view = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
    while (this.buf.length - off >= 8) {
      const size = view.getUint32(off + 4);
      if (this.buf.length - off - 8 < size) break;
      const stream = this.buf[off] === 2 ? 'stderr' : 'stdout';
      const text = new TextDecoder().decode(this.buf.subarray(off + 8, off + 8 + size));
      for (const l of text.replace(/\n$/, '').split('\n')) out.push({ stream, line: l });
      off += 8 + size;
    }
    this.buf = this.buf.slice(off);
    return out;
  }
}

/** "<ts> <details> <text>" → {ts, details: {k: v}, text} (details as Docker's query-escaped pairs). */
export function parseLine(line, { timestamps = true, details = true } = {}) {
  let rest = line;
  let ts = '';
  if (timestamps) {
    const i = rest.indexOf(' ');
    if (i > 0 && /^\d{4}-\d\d-\d\dT/.test(rest)) { ts = rest.slice(0, i); rest = rest.slice(i + 1); }
  }
  const d = {};
  if (details) {
    const i = rest.indexOf(' ');
    const head = i >= 0 ? rest.slice(0, i) : rest;
    if (head.includes('com.docker.swarm')) {
      for (const pair of head.split(',')) {
        const [k, v = ''] = pair.split('=');
        d[decodeURIComponent(k.replace(/\+/g, ' '))] = decodeURIComponent(v.replace(/\+/g, ' '));
      }
      rest = i >= 0 ? rest.slice(i + 1) : '';
    }
  }
  return { ts, details: d, text: rest };
}

/** Read a log route, calling onLines([{stream, ts, details, text}]) per chunk; resolves at the end. */
export async function readLogs(path, query, onLines, signal) {
  const q = new URLSearchParams({ stdout: '1', stderr: '1', timestamps: '1', details: '1', ...query });
  const resp = await fetch(`${path}?${q}`, { credentials: 'same-origin', signal });
  if (!resp.ok) {
    const data = await resp.json().catch(() => ({}));
    const err = new Error(data.message || `${resp.status} ${resp.statusText}`);
    err.status = resp.status;
    throw err;
  }
  const dec = new FrameDecoder();
  const reader = resp.body.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    const lines = dec.feed(value).map((f) => ({ stream: f.stream, ...parseLine(f.line) }));
    if (lines.length) onLines(lines);
  }
}
