// Reproduces the known stall (README "Browsers"): the first request on a new HTTP/3
// connection from Chromium sometimes gets no answer. Not part of `make test`. Each round
// starts a demo backend, a proxy and a browser, loads one page with a 4 s deadline, and on
// a stall prints what the proxy counts. Usage (from tests/browser, after `make browser-deps`):
//   QUIC_INGRESS_BIN=.../debug/quic-ingress node repro-stall.mjs [ROUNDS]

import { launchChromium, startDemoBackend, startProxy, stopAll } from './harness.mjs';

const rounds = Number(process.argv[2] || 10);
let stalls = 0;
try {
  for (let i = 0; i < rounds; i++) {
    const demo = await startDemoBackend(`web${i}`);
    const proxy = await startProxy({ routes: ['{id: web, path: /, backend_group: web}'], groups: { web: demo.url } });
    const browser = await launchChromium([
      `--origin-to-force-quic-on=127.0.0.1:${proxy.port}`,
      `--ignore-certificate-errors-spki-list=${proxy.spki}`,
    ]);
    const page = await browser.context.newPage();
    try {
      await page.goto(proxy.url(`/round/${i}`), { timeout: 4000 });
    } catch {
      stalls++;
      const open = await proxy.metric('quic_ingress_quic_connections_open');
      const requests = proxy.accessLog().length;
      console.log(`round ${i}: stalled; proxy: ${open} QUIC connection(s) open, ${requests} access line(s); log ${proxy.log}`);
    }
    await browser.close();
  }
  console.log(`${stalls} stall(s) in ${rounds} rounds`);
} finally {
  await stopAll();
}
