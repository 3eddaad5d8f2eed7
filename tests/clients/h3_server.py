#!/usr/bin/env python3
"""Independent HTTP/3 backend for quic-ingress tests (h3:// upstreams).

Built on aioquic, so the proxy's HTTP/3 client is checked against a server we did
not write. It answers every request with JSON like the demo backend's:

    {"backend": NAME, "method", "path", "authority", "headers",
     "body_bytes": N, "version": "HTTP/3"}

and a header `x-backend: NAME`. `?bytes=N` answers with N bytes of body instead
(streamed in 64 KiB chunks), and `?status=N` sets the status. It prints
`ready PORT` on stdout once it listens.

    h3_server.py --listen 127.0.0.1:0 --cert cert.pem --key key.pem --name NAME
"""

import argparse
import asyncio
import json
import sys
from urllib.parse import parse_qs, urlsplit

from aioquic.asyncio import QuicConnectionProtocol, serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ProtocolNegotiated

CHUNK = 64 * 1024


class Backend(QuicConnectionProtocol):
    name = "h3"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.http = None
        self.requests = {}  # stream id -> {"headers": [...], "body_bytes": int}

    def quic_event_received(self, event):
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self.http = H3Connection(self._quic)
        if self.http is None:
            return
        for h3_event in self.http.handle_event(event):
            self.h3_event_received(h3_event)

    def h3_event_received(self, event):
        if isinstance(event, HeadersReceived):
            request = self.requests.setdefault(event.stream_id, {"headers": [], "body_bytes": 0})
            request["headers"] += event.headers
        elif isinstance(event, DataReceived):
            request = self.requests.setdefault(event.stream_id, {"headers": [], "body_bytes": 0})
            request["body_bytes"] += len(event.data)
        else:
            return
        if event.stream_ended:
            asyncio.ensure_future(self.respond(event.stream_id, self.requests.pop(event.stream_id)))

    async def respond(self, stream_id, request):
        pseudo, headers = {}, {}
        for name, value in request["headers"]:
            name, value = name.decode(), value.decode("utf-8", "replace")
            if name.startswith(":"):
                pseudo[name] = value
            else:
                headers[name] = headers[name] + ", " + value if name in headers else value
        url = urlsplit(pseudo.get(":path", "/"))
        query = parse_qs(url.query)
        status = int(query.get("status", ["200"])[0])
        size = query.get("bytes", [None])[0]
        response = [(b":status", str(status).encode()), (b"x-backend", self.name.encode())]
        if size is not None:
            size = int(size)
            response.append((b"content-length", str(size).encode()))
            self.http.send_headers(stream_id, response, end_stream=size == 0)
            sent = 0
            while sent < size:
                n = min(CHUNK, size - sent)
                sent += n
                self.http.send_data(stream_id, b"x" * n, end_stream=sent == size)
                self.transmit()
                await asyncio.sleep(0)  # let the event loop send and receive
            self.transmit()
            return
        body = json.dumps({
            "backend": self.name,
            "method": pseudo.get(":method"),
            "path": url.path,
            "authority": pseudo.get(":authority"),
            "headers": headers,
            "body_bytes": request["body_bytes"],
            "version": "HTTP/3",
        }).encode()
        response += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        self.http.send_headers(stream_id, response)
        self.http.send_data(stream_id, body, end_stream=True)
        self.transmit()


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--name", default="h3")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    configuration = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    configuration.load_cert_chain(args.cert, args.key)
    Backend.name = args.name
    server = await serve(host, int(port), configuration=configuration, create_protocol=Backend)
    bound = server._transport.get_extra_info("sockname")[1]
    print(f"ready {bound}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
