// Starts the real errscope-collector binary on 127.0.0.1:0 with a fresh data
// directory, and talks to its API with the admin bearer token.
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const COLLECTOR_BIN = process.env.ERRSCOPE_COLLECTOR_BIN
  ? path.resolve(process.env.ERRSCOPE_COLLECTOR_BIN)
  : path.resolve(
      process.env.CARGO_TARGET_DIR ?? path.resolve(here, '../../../target'),
      'debug/errscope-collector',
    );

// With ERRSCOPE_TEST_STORE=postgres each collector gets a PostgreSQL server of its own
// (testkit's errscope-pg: a throwaway cluster, gone when its stdin closes).
const PG_BIN = path.resolve(
  process.env.CARGO_TARGET_DIR ?? path.resolve(here, '../../../target'),
  'debug/errscope-pg',
);

/** Starts errscope-pg and resolves with [process, URL]. */
async function startPostgres(timeoutMs) {
  if (!existsSync(PG_BIN)) {
    throw new Error(`errscope-pg not found at ${PG_BIN}: run \`cargo build -p errscope-testkit\``);
  }
  const proc = spawn(PG_BIN, [], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`errscope-pg printed no URL within ${timeoutMs} ms: ${out}`)), timeoutMs);
    proc.stdout.on('data', (d) => {
      out += d.toString();
      const m = out.match(/^(postgres:\/\/\S+)\n/m);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    proc.stderr.on('data', (d) => { out += d.toString(); });
    proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`errscope-pg exited (${code}): ${out}`)); });
  });
  return [proc, url];
}

export const ADMIN_PASSWORD = 'correct horse battery staple';
export const ADMIN_TOKEN = 'test-admin-token-0123456789abcdef';

export class Collector {
  constructor(proc, base, dataDir) {
    this.proc = proc;
    this.base = base;
    this.dataDir = dataDir;
    this.output = [];
  }

  /** Starts a collector and resolves once it prints its listening address. */
  static async start({ timeoutMs = 30_000 } = {}) {
    if (!existsSync(COLLECTOR_BIN)) {
      throw new Error(`collector binary not found at ${COLLECTOR_BIN}: run \`cargo build -p errscope-collector\` or set ERRSCOPE_COLLECTOR_BIN`);
    }
    const dataDir = await mkdtemp(path.join(tmpdir(), 'errscope-dashboard-test-'));
    const args = ['serve', '--listen', '127.0.0.1:0', '--data', dataDir];
    let pg = null;
    if (process.env.ERRSCOPE_TEST_STORE === 'postgres') {
      const [pgProc, url] = await startPostgres(timeoutMs);
      pg = pgProc;
      args.push('--database', url);
    }
    const proc = spawn(COLLECTOR_BIN, args, {
      env: {
        ...process.env,
        ERRSCOPE_ADMIN_PASSWORD: ADMIN_PASSWORD,
        ERRSCOPE_ADMIN_TOKEN: ADMIN_TOKEN,
        RUST_LOG: process.env.RUST_LOG || 'warn',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const c = new Collector(proc, null, dataDir);
    c.pg = pg;
    const base = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`collector did not print "listening on" within ${timeoutMs} ms; output:\n${c.output.join('')}`)), timeoutMs);
      let buf = '';
      proc.stdout.on('data', (d) => {
        const s = d.toString();
        c.output.push(s);
        buf += s;
        const m = buf.match(/listening on (http:\/\/127\.0\.0\.1:\d+)/);
        if (m) { clearTimeout(timer); resolve(m[1]); }
      });
      proc.stderr.on('data', (d) => { c.output.push(d.toString()); });
      proc.on('exit', (code, sig) => {
        clearTimeout(timer);
        reject(new Error(`collector exited (code ${code}, signal ${sig}) before listening; output:\n${c.output.join('')}`));
      });
      proc.on('error', (e) => { clearTimeout(timer); reject(e); });
    });
    c.base = base;
    return c;
  }

  async stop() {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      const exited = new Promise((r) => this.proc.once('exit', r));
      this.proc.kill('SIGTERM');
      const t = setTimeout(() => this.proc.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(t);
    }
    if (this.pg && this.pg.exitCode === null) {
      const gone = new Promise((r) => this.pg.once('exit', r));
      this.pg.stdin.end();
      await gone;
    }
    await rm(this.dataDir, { recursive: true, force: true });
  }

  /** GET/PUT/POST the JSON API with the admin bearer token. */
  async api(pathname, { method = 'GET', body } = {}) {
    const res = await fetch(this.base + pathname, {
      method,
      headers: {
        Authorization: `Bearer ${ADMIN_TOKEN}`,
        ...(body ? { 'Content-Type': 'application/json' } : {}),
      },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${pathname}: HTTP ${res.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }

  /** The default project (id 1) and its DSN key. */
  async project(pid = 1) {
    const projects = await this.api('/api/0/projects/');
    const p = projects.find((x) => x.id === pid);
    if (!p) throw new Error(`project ${pid} not in ${JSON.stringify(projects)}`);
    return { ...p, key: new URL(p.dsn).username };
  }
}
