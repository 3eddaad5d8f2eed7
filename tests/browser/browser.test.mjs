// A real browser against quic-ingress: Debian's Chromium, headless, driven by playwright-core
// (`make test-browser`). Pages over HTTP/3, Alt-Svc recorded with the advertised port, a
// resumed connection sending its GET as early data, 425 answered and retried, a fetch()
// POST on a resumed connection, and a WebSocket over HTTP/1.1 through the TCP listener.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  attempt,
  closeAllConnections,
  freePort,
  launchChromium,
  nextHop,
  startDelayRelay,
  startDemoBackend,
  startProxy,
  startTestBackend,
  stalls,
  stopAll,
  waitFor,
  withDeadline,
  WORK_DIR,
} from './harness.mjs';

const NAV = { timeout: 8000 };
let proxy;
let altSvcPort;

before(
  async () => {
    const demo = await startDemoBackend('web');
    const backend = await startTestBackend();
    // Advertised in Alt-Svc, different from the listen port: the browser can only have
    // learned it from our header.
    altSvcPort = await freePort();
    proxy = await startProxy({
      routes: [
        '{id: too-early, path: /too-early, backend_group: test}',
        '{id: ws, path: /ws, path_type: Exact, backend_group: test}',
        '{id: post, path: /post, backend_group: test}',
        '{id: web, path: /, backend_group: web}',
      ],
      groups: { web: demo.url, test: backend.url },
      altSvcPort,
    });
    console.log(`# proxy on 127.0.0.1:${proxy.port} (Alt-Svc port ${altSvcPort}); logs in ${WORK_DIR}`);
  },
  { timeout: 60000 },
);

after(
  async () => {
    if (stalls.length > 0) console.log(`# ${stalls.length} stalled step(s), retried:\n# ${stalls.join('\n# ')}`);
    await stopAll();
  },
  { timeout: 60000 },
);

test('a page loads over HTTP/3', { timeout: 120000 }, async () => {
  await attempt('HTTP/3 page load in a new browser', 3, async (i) => {
    const browser = await launchChromium([
      `--origin-to-force-quic-on=127.0.0.1:${proxy.port}`,
      `--ignore-certificate-errors-spki-list=${proxy.spki}`,
    ]);
    try {
      const page = await browser.context.newPage();
      const resp = await page.goto(proxy.url(`/h3-page/${i}`), NAV);
      assert.equal(resp.status(), 200);
      assert.equal(await nextHop(page), 'h3');
      const [line] = await proxy.accessFor(`/h3-page/${i}`);
      assert.equal(line.protocol, 'H3', `access log: ${JSON.stringify(line)}`);
      assert.equal(line.status, 200);
    } finally {
      await browser.close();
    }
  });
});

test('Alt-Svc is recorded with the advertised port, and a WebSocket runs over HTTP/1.1', { timeout: 90000 }, async () => {
  // No forcing: the page comes over TCP (HTTPS), and only the header tells of HTTP/3.
  const browser = await launchChromium([`--ignore-certificate-errors-spki-list=${proxy.spki}`]);
  try {
    const page = await browser.context.newPage();
    const resp = await page.goto(proxy.url('/tcp-page'), NAV);
    assert.equal(resp.status(), 200);
    assert.equal(resp.headers()['alt-svc'], `h3=":${altSvcPort}"; ma=86400`);
    assert.match(await nextHop(page), /^(h2|http\/1\.1)$/);
    const [line] = await proxy.accessFor('/tcp-page');
    assert.equal(line.protocol, 'Tcp', `access log: ${JSON.stringify(line)}`);

    const echoed = await withDeadline(
      'WebSocket echo',
      15000,
      page.evaluate(
        (url) =>
          new Promise((resolve, reject) => {
            const ws = new WebSocket(url);
            ws.onopen = () => ws.send('hello through quic-ingress');
            ws.onmessage = (e) => {
              resolve(e.data);
              ws.close();
            };
            ws.onerror = () => reject(new Error('WebSocket error'));
          }),
        proxy.url('/ws').replace('https:', 'wss:'),
      ),
    );
    assert.equal(echoed, 'hello through quic-ingress');
    const [ws] = await proxy.accessFor('/ws');
    assert.equal(ws.status, 101, `access log: ${JSON.stringify(ws)}`);
    assert.equal(ws.protocol, 'Tcp');
  } finally {
    // Chromium writes "Network Persistent State" on a timer or at exit: close it first.
    await browser.close();
  }
  const file = path.join(browser.userDataDir, 'Default', 'Network Persistent State');
  const state = await waitFor('Network Persistent State', 10000, () =>
    fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, 'utf8')) : null,
  );
  const servers = state?.net?.http_server_properties?.servers ?? [];
  const ours = servers.find((s) => s.server === `https://127.0.0.1:${proxy.port}`);
  assert.ok(ours, `no entry for our origin in ${JSON.stringify(servers)}`);
  const alt = (ours.alternative_service ?? []).find((a) => (a.advertised_alpns ?? []).includes('h3'));
  assert.ok(alt, `no h3 alternative service in ${JSON.stringify(ours)}`);
  assert.equal(alt.port, altSvcPort);
  assert.equal(alt.protocol_str, 'quic');
});

test('one browser: a revisit resumes, its GET is early data; 425 is retried; a POST succeeds', { timeout: 120000 }, async () => {
  // Through a relay adding 40 ms each way, so a request sent with the first flight is
  // surely read before the handshake completes (on bare loopback that would be a race).
  const relay = await startDelayRelay(proxy.port, 40);
  const at = relay.port;
  const browser = await launchChromium([
    `--origin-to-force-quic-on=127.0.0.1:${at}`,
    `--ignore-certificate-errors-spki-list=${proxy.spki}`,
  ]);
  const resumed = 'quic_ingress_tls_resumptions_total{outcome="resumed"}';
  const accepted = 'quic_ingress_quic_zero_rtt_total{outcome="accepted"}';
  try {
    const page = await browser.context.newPage();
    const resumedBefore = await proxy.metric(resumed);
    const acceptedBefore = await proxy.metric(accepted);
    await attempt('first visit', 3, async (i) => {
      // A retry comes after a stalled connection: close it (the retry then resumes).
      if (i > 1) await closeAllConnections(browser.context, proxy);
      const first = await page.goto(proxy.url(`/visit-1/${i}`, at), NAV);
      assert.equal(first.status(), 200);
      assert.equal(await nextHop(page), 'h3');
      if (i === 1) {
        assert.equal((await first.json()).headers['early-data'], undefined, 'a full handshake carries no early data');
        assert.equal((await proxy.accessFor(`/visit-1/${i}`))[0].early_data, false);
      }
    });

    // A new connection in the same process: its TLS session cache holds our ticket.
    await attempt('revisit on a new connection', 3, async (i) => {
      await closeAllConnections(browser.context, proxy);
      const revisit = await page.goto(proxy.url(`/visit-2/${i}`, at), NAV);
      assert.equal(revisit.status(), 200);
      assert.equal((await revisit.json()).headers['early-data'], '1', 'the backend is told the GET came as early data');
      const [line] = await proxy.accessFor(`/visit-2/${i}`);
      assert.equal(line.early_data, true, `access log: ${JSON.stringify(line)}`);
      assert.equal(line.protocol, 'H3');
    });
    assert.ok((await proxy.metric(resumed)) > resumedBefore, 'the session was resumed');
    assert.ok((await proxy.metric(accepted)) > acceptedBefore, '0-RTT was accepted');

    // An origin that will not risk a replay answers 425 to early data (RFC 8470 §5.2);
    // Chromium sends the request again once the handshake is done, and fetch() sees 200.
    await attempt('fetch() answered 425', 3, async (i) => {
      await closeAllConnections(browser.context, proxy);
      const retried = await withDeadline(
        'fetch /too-early',
        8000,
        page.evaluate(async (url) => {
          const r = await fetch(url);
          return { status: r.status, body: await r.json() };
        }, `/too-early/${i}`),
      );
      assert.equal(retried.status, 200, JSON.stringify(retried));
      assert.equal(retried.body.early, false);
      const lines = await proxy.accessFor(`/too-early/${i}`, 2);
      assert.deepEqual(
        lines.map((l) => [l.status, l.early_data]),
        [
          [425, true],
          [200, false],
        ],
      );
    });

    // A fetch() POST as the first request of a resumed connection. Our proxy answers 425
    // to a POST in early data, but Chromium never sends one there: a request whose method
    // is not safe waits for the handshake (HttpUtil::IsMethodSafe gates early data), so
    // the POST arrives once, after the handshake. Either way the page gets its 200.
    const resumedBeforePost = await proxy.metric(resumed);
    const postLines = await attempt('fetch() POST on a new connection', 3, async (i) => {
      await closeAllConnections(browser.context, proxy);
      const posted = await withDeadline(
        'fetch POST',
        8000,
        page.evaluate(async (url) => {
          const r = await fetch(url, { method: 'POST', body: 'order=1' });
          return { status: r.status, body: await r.json() };
        }, `/post/${i}`),
      );
      assert.equal(posted.status, 200, JSON.stringify(posted));
      assert.equal(posted.body.method, 'POST');
      return (await proxy.accessFor(`/post/${i}`)).map((l) => [l.status, l.early_data]);
    });
    assert.ok((await proxy.metric(resumed)) > resumedBeforePost, 'the POST went on a resumed connection');
    const held = postLines.length === 1 && postLines[0][0] === 200 && postLines[0][1] === false;
    const retriedPost =
      postLines.length === 2 && postLines[0][0] === 425 && postLines[0][1] === true && postLines[1][0] === 200;
    assert.ok(held || retriedPost, `POST access log: ${JSON.stringify(postLines)}`);
    console.log(`# fetch() POST on a resumed connection: ${held ? 'held for the handshake, sent once' : '425, then retried'}`);
  } finally {
    await browser.close();
  }
});
