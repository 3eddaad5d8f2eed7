// Harness for the browser tests: the `quic-ingress` binary as proxy and demo backend, a
// WebSocket/425 test backend and a UDP delay relay in this process, headless Chromium
// through playwright-core, and waits that all have deadlines. Every process started here
// is stopped by `stopAll()`.

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import dgram from 'node:dgram';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { chromium } from 'playwright-core';

export const BIN = process.env.QUIC_INGRESS_BIN;
export const CHROMIUM = process.env.QUIC_INGRESS_CHROMIUM || '/usr/bin/chromium';
/** Logs and configs; kept after the run for diagnosis (user-data-dirs are removed). */
export const WORK_DIR = fs.mkdtempSync(path.join(os.tmpdir(), 'quic-ingress-browser-'));

// Flags from /work/.library/env/machines/polyglot.md: as root, Chromium needs --no-sandbox;
// without the background-networking flags it keeps dialling Google's hosts, which this
// closed network refuses.
const BASE_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const cleanups = [];

/** Stops every process, server, relay and browser this harness started (newest first). */
export async function stopAll() {
  while (cleanups.length > 0) {
    const cleanup = cleanups.pop();
    try {
      await cleanup();
    } catch (e) {
      console.error(`cleanup failed: ${e}`);
    }
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` (sync or async) until it returns a truthy value, or throws after `deadlineMs`. */
export async function waitFor(what, deadlineMs, check) {
  const start = Date.now();
  let lastError;
  while (Date.now() - start < deadlineMs) {
    try {
      const value = await check();
      if (value) return value;
    } catch (e) {
      lastError = e;
    }
    await sleep(50);
  }
  throw new Error(`timed out after ${deadlineMs} ms waiting for ${what}${lastError ? ` (last error: ${lastError})` : ''}`);
}

/** Rejects with `what` if `promise` has not settled within `ms`. */
export function withDeadline(what, ms, promise) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

const bindUdp = (port) =>
  new Promise((resolve, reject) => {
    const socket = dgram.createSocket('udp4');
    socket.once('error', reject);
    socket.bind(port, '127.0.0.1', () => resolve(socket));
  });

const bindTcp = (port) =>
  new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server));
  });

/** A port free on both UDP and TCP at the time of asking (the proxy listens on both). */
export async function freePort() {
  for (let i = 0; i < 50; i++) {
    const udp = await bindUdp(0);
    const port = udp.address().port;
    try {
      const tcp = await bindTcp(port);
      await new Promise((resolve) => tcp.close(resolve));
      udp.close();
      return port;
    } catch {
      udp.close();
    }
  }
  throw new Error('no free port found in 50 tries');
}

/** Starts `BIN args`, stderr to `WORK_DIR/name.log`; stopped by stopAll() (SIGTERM, then SIGKILL). */
function startBin(name, args) {
  if (!BIN || !fs.existsSync(BIN)) {
    throw new Error(`QUIC_INGRESS_BIN (${BIN}) is not a file: run \`make test-browser\`, which builds it`);
  }
  const log = path.join(WORK_DIR, `${name}.log`);
  const child = spawn(BIN, args, { stdio: ['ignore', 'ignore', fs.openSync(log, 'w')] });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  cleanups.push(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const gone = await Promise.race([exited, sleep(5000).then(() => null)]);
    if (!gone) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  return { child, log, exited };
}

/** `GET http://addr/path` → status, or throws. */
function httpStatus(host, port, urlPath) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host, port, path: urlPath, timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

/** A `quic-ingress demo-backend` (HTTP/1.1 echo of the request as JSON). */
export async function startDemoBackend(name) {
  const port = await freePort();
  const proc = startBin(`backend-${name}`, ['demo-backend', '--listen', `127.0.0.1:${port}`, '--name', name]);
  await waitFor(`demo backend ${name}`, 10000, async () => (await httpStatus('127.0.0.1', port, '/health')) === 200);
  return { port, url: `http://127.0.0.1:${port}`, proc };
}

/** The JSON lines of a log file (lines that are not JSON are skipped). */
export function jsonLines(file) {
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .flatMap((line) => {
      try {
        return [JSON.parse(line)];
      } catch {
        return [];
      }
    });
}

/**
 * `quic-ingress serve` with `routes` (YAML list items) and `groups` (id → backend URL).
 * Returns its port, admin port, log, the dev certificate's SPKI hash and an accessLog().
 */
export async function startProxy({ routes, groups, altSvcPort }) {
  const port = await freePort();
  const admin = await freePort();
  const yaml = [
    'server:',
    `  address: "127.0.0.1:${port}"`,
    '  drain_timeout: 2s',
    ...(altSvcPort ? [`  alt_svc_port: ${altSvcPort}`] : []),
    'telemetry:',
    `  admin_address: "127.0.0.1:${admin}"`,
    'routes:',
    ...routes.map((r) => `  - ${r}`),
    'backend_groups:',
    ...Object.entries(groups).map(([id, url]) => `  - {id: ${id}, backends: [{url: "${url}"}]}`),
    '',
  ].join('\n');
  const config = path.join(WORK_DIR, `proxy-${port}.yaml`);
  fs.writeFileSync(config, yaml);
  const proc = startBin(`proxy-${port}`, ['serve', '--config', config]);
  let exited = null;
  proc.exited.then((status) => (exited = status));
  await waitFor(`proxy on ${port} to be ready`, 20000, async () => {
    if (exited) throw new Error(`proxy exited during start-up (${JSON.stringify(exited)}); log: ${proc.log}`);
    return (await httpStatus('127.0.0.1', admin, '/readyz')) === 200;
  });
  const spki = jsonLines(proc.log).find((l) => l.spki_sha256)?.spki_sha256;
  if (!spki) throw new Error(`the proxy logged no spki_sha256; log: ${proc.log}`);
  return {
    port,
    admin,
    log: proc.log,
    spki,
    url: (p, at = port) => `https://127.0.0.1:${at}${p}`,
    accessLog: () => jsonLines(proc.log).filter((l) => l.target === 'access'),
    /** The access-log lines for `urlPath`, once there are at least `n`. */
    accessFor: (urlPath, n = 1) =>
      waitFor(`${n} access-log line(s) for ${urlPath}`, 10000, () => {
        const lines = jsonLines(proc.log).filter((l) => l.target === 'access' && l.path === urlPath);
        return lines.length >= n ? lines : null;
      }),
    metric: async (series) => {
      const text = await new Promise((resolve, reject) => {
        http
          .get({ host: '127.0.0.1', port: admin, path: '/metrics', timeout: 2000 }, (res) => {
            let body = '';
            res.on('data', (c) => (body += c));
            res.on('end', () => resolve(body));
          })
          .on('error', reject);
      });
      const line = text.split('\n').find((l) => l.startsWith(`${series} `));
      return line ? Number(line.slice(series.length + 1)) : 0;
    },
  };
}

// === The test backend: 425 for early data, and a WebSocket echo ===

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

/** One unmasked server frame (RFC 6455 §5.2). */
function wsFrame(opcode, payload) {
  const len = payload.length;
  const head = len < 126 ? Buffer.from([0x80 | opcode, len]) : Buffer.alloc(4);
  if (len >= 126) {
    if (len > 0xffff) throw new Error('frame too large for this test backend');
    head[0] = 0x80 | opcode;
    head[1] = 126;
    head.writeUInt16BE(len, 2);
  }
  return Buffer.concat([head, payload]);
}

/** Echoes every text/binary frame of a client WebSocket back; answers close and ping. */
function wsEcho(socket) {
  let buf = Buffer.alloc(0);
  socket.on('data', (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    for (;;) {
      if (buf.length < 2) return;
      const opcode = buf[0] & 0x0f;
      const masked = (buf[1] & 0x80) !== 0;
      let len = buf[1] & 0x7f;
      let at = 2;
      if (len === 126) {
        if (buf.length < 4) return;
        len = buf.readUInt16BE(2);
        at = 4;
      } else if (len === 127) {
        return socket.destroy(); // no 64-bit frames in these tests
      }
      const need = at + (masked ? 4 : 0) + len;
      if (buf.length < need) return;
      const mask = masked ? buf.subarray(at, at + 4) : null;
      const payload = Buffer.from(buf.subarray(need - len, need));
      if (mask) for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i % 4];
      buf = buf.subarray(need);
      if (opcode === 0x8) return socket.end(wsFrame(0x8, payload));
      if (opcode === 0x9) socket.write(wsFrame(0xa, payload));
      else if (opcode === 0x1 || opcode === 0x2) socket.write(wsFrame(opcode, payload));
    }
  });
  socket.on('error', () => {});
}

/**
 * An HTTP/1.1 backend in this process: any request answers JSON `{early, method, path}`,
 * with 425 when the proxy marked it `Early-Data: 1` and the path starts with /too-early
 * (what an origin that will not risk a replay does, RFC 8470 §5.2); `/ws` upgrades to a
 * WebSocket echo. (The demo backend's upgrade echoes raw bytes, which a browser refuses.)
 */
export async function startTestBackend() {
  const port = await freePort();
  const server = http.createServer((req, res) => {
    const early = req.headers['early-data'] === '1';
    req.resume();
    req.on('end', () => {
      const status = early && req.url.startsWith('/too-early') ? 425 : 200;
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ early, method: req.method, path: req.url }));
    });
  });
  server.on('upgrade', (req, socket) => {
    const key = req.headers['sec-websocket-key'];
    if (req.url !== '/ws' || (req.headers.upgrade || '').toLowerCase() !== 'websocket' || !key) {
      return socket.end('HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n');
    }
    const accept = crypto.createHash('sha1').update(key + WS_GUID).digest('base64');
    socket.write(
      `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`,
    );
    wsEcho(socket);
  });
  const sockets = new Set();
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  cleanups.push(
    () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  );
  return { port, url: `http://127.0.0.1:${port}` };
}

// === A UDP relay that delays every datagram ===

/**
 * Relays UDP between clients and `127.0.0.1:targetPort`, each datagram delayed `oneWayMs`
 * each way, one upstream socket per client address. On loopback a QUIC handshake takes
 * microseconds, so whether a request lands before the client's Finished (early data) would
 * be a race; 40 ms each way makes it certain, as for a distant client.
 */
export async function startDelayRelay(targetPort, oneWayMs) {
  const front = await bindUdp(0);
  const upstreams = new Map();
  let closed = false;
  front.on('message', async (msg, from) => {
    const key = `${from.address}:${from.port}`;
    let back = upstreams.get(key);
    if (!back) {
      back = bindUdp(0).then((socket) => {
        socket.on('message', (reply) =>
          setTimeout(() => closed || front.send(reply, from.port, from.address), oneWayMs),
        );
        return socket;
      });
      upstreams.set(key, back);
    }
    const socket = await back;
    setTimeout(() => closed || socket.send(msg, targetPort, '127.0.0.1'), oneWayMs);
  });
  cleanups.push(async () => {
    closed = true;
    front.close();
    for (const back of upstreams.values()) (await back).close();
  });
  return { port: front.address().port };
}

// === Chromium ===

/**
 * Headless Chromium with a fresh profile (`userDataDir`, returned so a test can read it);
 * `extraArgs` after the base flags. Closed by stopAll() if the test does not close it.
 */
export async function launchChromium(extraArgs) {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'quic-ingress-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [...BASE_ARGS, ...extraArgs, ...netLogArgs()],
    timeout: 30000,
  });
  let open = true;
  const close = async () => {
    if (open) {
      open = false;
      await withDeadline('closing Chromium', 15000, context.close());
    }
  };
  cleanups.push(async () => {
    await close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  });
  return { context, userDataDir, close };
}

/** QUIC_INGRESS_NETLOG=FILE: Chromium writes its NetLog there (for diagnosing a failure). */
function netLogArgs() {
  const file = process.env.QUIC_INGRESS_NETLOG;
  return file ? [`--log-net-log=${file}`, '--net-log-capture-mode=Everything'] : [];
}

/** `nextHopProtocol` of the page's navigation: `h3`, `h2` or `http/1.1`. */
export const nextHop = (page) => page.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol);

/**
 * Closes every connection of the browser, QUIC sessions included, keeping its TLS session
 * cache: the "Flush socket pools" button of chrome://net-internals (the page calls the
 * network service's CloseAllConnections). Done once the proxy counts no open QUIC
 * connection. The next request makes a new connection, which resumes the session and may
 * send early data.
 */
export async function closeAllConnections(context, proxy) {
  const open = 'quic_ingress_quic_connections_open';
  for (let attempt = 1; attempt <= 3; attempt++) {
    const page = await context.newPage();
    try {
      await page.goto('chrome://net-internals/#sockets', { timeout: 10000 });
      await page.click('#sockets-view-flush-button', { timeout: 10000 });
    } finally {
      await page.close();
    }
    try {
      return await waitFor('the proxy to see the QUIC connections closed', 5000, async () => (await proxy.metric(open)) === 0);
    } catch (e) {
      console.log(`# closing Chromium's connections, attempt ${attempt}: ${e.message}`);
    }
  }
  throw new Error('Chromium kept its QUIC connection open after 3 flushes of its socket pools');
}

/** Stalls seen (see `attempt`), reported at the end of the run. */
export const stalls = [];

/**
 * Runs `step` (which sets its own deadlines) up to `tries` times. For the first request
 * on a new HTTP/3 connection, which the proxy sometimes never answers (see the README's
 * "Browsers"): each stall is logged and counted, so it is visible, not hidden.
 */
export async function attempt(what, tries, step) {
  let last;
  for (let i = 1; i <= tries; i++) {
    try {
      return await step(i);
    } catch (e) {
      last = e;
      stalls.push(`${what} (attempt ${i}): ${e.message.split('\n')[0]}`);
      console.log(`# ${what}: attempt ${i} of ${tries} failed: ${e.message.split('\n')[0]}`);
    }
  }
  throw last;
}
