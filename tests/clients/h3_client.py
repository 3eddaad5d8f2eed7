#!/usr/bin/env python3
"""Independent HTTP/3 client for quic-ingress integration tests.

This is a small third-party client built on aioquic (not on our own Rust
HTTP/3 stack), so that the tests check the proxy against an implementation
we did not write. It opens ONE QUIC connection (ALPN "h3", SNI = URL host),
sends --count requests for the URL over it, at most --concurrency at a time,
and prints one JSON line per response, in completion order:

    {"status": 200, "headers": {"x-backend": "one", ...},
     "body": "...", "http_version": "HTTP/3",
     "session_resumed": false, "early_data_accepted": false}

With --session-ticket FILE the client resumes with the ticket saved there by an
earlier run (and saves the server's new ticket); with --zero-rtt as well, the
requests are sent as 0-RTT early data, before the handshake completes.

Exit status: 0 when every request got a response (whatever its status),
1 on a connection or protocol failure or when --timeout (overall) expires,
with a one-line error on stderr.

Install: python3 -m venv VENV && VENV/bin/pip install -r requirements.txt
"""

import argparse
import asyncio
import json
import logging
import os
import pickle
import ssl
import sys
from urllib.parse import urlsplit

import aioquic
from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamReset


class H3ClientProtocol(QuicConnectionProtocol):
    """A QUIC connection carrying HTTP/3 requests, one future per stream."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.http = H3Connection(self._quic)
        self.pending = {}  # stream id -> (future, response dict)
        self.close_reason = None

    async def request(self, method, url, headers, body):
        if self.close_reason is not None:
            raise ConnectionError(self.close_reason)
        stream_id = self._quic.get_next_available_stream_id()
        future = self._loop.create_future()
        self.pending[stream_id] = (future, {"status": None, "headers": {}, "body": b""})
        path = (url.path or "/") + ("?" + url.query if url.query else "")
        request_headers = [
            (b":method", method.encode()),
            (b":scheme", url.scheme.encode()),
            (b":authority", url.netloc.encode()),
            (b":path", path.encode()),
        ] + headers
        self.http.send_headers(stream_id, request_headers, end_stream=body is None)
        if body is not None:
            self.http.send_data(stream_id, body, end_stream=True)
        self.transmit()
        return await future

    def quic_event_received(self, event: QuicEvent):
        if isinstance(event, ConnectionTerminated):
            self.close_reason = (
                f"connection closed (error {event.error_code}): {event.reason_phrase}"
            )
            for future, _ in self.pending.values():
                if not future.done():
                    future.set_exception(ConnectionError(self.close_reason))
            return
        if isinstance(event, StreamReset) and event.stream_id in self.pending:
            future, _ = self.pending[event.stream_id]
            if not future.done():
                future.set_exception(
                    ConnectionError(f"stream {event.stream_id} reset (error {event.error_code})")
                )
            return
        for h3_event in self.http.handle_event(event):
            self.h3_event_received(h3_event)

    def h3_event_received(self, event):
        if event.stream_id not in self.pending or event.push_id is not None:
            return
        future, response = self.pending[event.stream_id]
        if isinstance(event, HeadersReceived):
            for name, value in event.headers:
                name, value = name.decode(), value.decode("utf-8", "replace")
                if name == ":status":
                    response["status"] = int(value)
                elif name in response["headers"]:
                    response["headers"][name] += ", " + value
                else:
                    response["headers"][name] = value
        elif isinstance(event, DataReceived):
            response["body"] += event.data
        if event.stream_ended and not future.done():
            future.set_result(response)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="https:// URL to request")
    parser.add_argument("--insecure", action="store_true", help="do not verify the server certificate")
    parser.add_argument("--cacert", metavar="FILE", help="PEM file of CA certificates to trust")
    parser.add_argument("--count", type=int, default=1, metavar="N", help="number of requests (default 1)")
    parser.add_argument("--concurrency", type=int, default=1, metavar="C", help="requests in flight at once (default 1)")
    parser.add_argument("--method", default="GET", metavar="M", help="request method (default GET)")
    parser.add_argument("--data", metavar="STR", help="request body, sent as UTF-8")
    parser.add_argument("--header", action="append", default=[], metavar="'Name: value'", help="extra request header (repeatable)")
    parser.add_argument("--connect-to", metavar="HOST:PORT", help="dial this address instead of the URL's (SNI and :authority stay the URL's)")
    parser.add_argument("--session-ticket", metavar="FILE", help="resume with the TLS session ticket in FILE, if any, and save the new one there")
    parser.add_argument("--zero-rtt", action="store_true", help="send the requests as 0-RTT early data (needs a ticket from --session-ticket)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS", help="overall deadline (default 30)")
    args = parser.parse_args(argv)
    if args.zero_rtt and not args.session_ticket:
        parser.error("--zero-rtt needs --session-ticket")
    if args.count < 1 or args.concurrency < 1:
        parser.error("--count and --concurrency must be at least 1")
    return args


def request_headers(args):
    headers = []
    for line in args.header:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"bad --header {line!r}, expected 'Name: value'")
        headers.append((name.strip().lower().encode(), value.strip().encode()))
    names = {name for name, _ in headers}
    if b"user-agent" not in names:
        headers.append((b"user-agent", f"aioquic/{aioquic.__version__}".encode()))
    if args.data is not None and b"content-length" not in names:
        headers.append((b"content-length", str(len(args.data.encode())).encode()))
    return headers


def quiet_abandoned_futures(loop, context):
    # When the deadline cancels a handshake, aioquic later fails a waiter nobody
    # awaits any more; keep stderr to our own one-line error.
    if not context.get("message", "").startswith("Future exception was never retrieved"):
        loop.default_exception_handler(context)


async def run(args):
    asyncio.get_running_loop().set_exception_handler(quiet_abandoned_futures)
    url = urlsplit(args.url)
    if url.scheme != "https" or not url.hostname:
        raise ValueError(f"expected an https:// URL, got {args.url!r}")
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=H3_ALPN, server_name=url.hostname
    )
    if args.insecure:
        configuration.verify_mode = ssl.CERT_NONE
    if args.cacert:
        configuration.load_verify_locations(cafile=args.cacert)
    headers = request_headers(args)
    body = args.data.encode() if args.data is not None else None
    if args.session_ticket and os.path.exists(args.session_ticket):
        with open(args.session_ticket, "rb") as f:
            configuration.session_ticket = pickle.load(f)
    saved_tickets = []

    def save_ticket(ticket):
        saved_tickets.append(ticket)

    protocols = []

    def create_protocol(*a, **kw):
        protocols.append(H3ClientProtocol(*a, **kw))
        return protocols[-1]

    try:
        dial_host, dial_port = url.hostname, url.port or 443
        if args.connect_to:
            dial_host, _, port = args.connect_to.rpartition(":")
            dial_port = int(port)
            configuration.server_name = url.hostname
        async with connect(
            dial_host, dial_port,
            configuration=configuration, create_protocol=create_protocol,
            session_ticket_handler=save_ticket if args.session_ticket else None,
            # 0-RTT: hand over the connection before the handshake completes, so the
            # requests below leave in early data.
            wait_connected=not args.zero_rtt,
        ) as client:
            slots = asyncio.Semaphore(args.concurrency)

            async def one():
                async with slots:
                    response = await client.request(args.method, url, headers, body)
                response["body"] = response["body"].decode("utf-8", "replace")
                response["http_version"] = "HTTP/3"
                tls = client._quic.tls
                response["session_resumed"] = bool(getattr(tls, "session_resumed", False))
                response["early_data_accepted"] = bool(getattr(tls, "early_data_accepted", False))
                print(json.dumps(response), flush=True)

            await asyncio.gather(*(one() for _ in range(args.count)))
            if args.session_ticket:
                # The server sends tickets right after the handshake; wait briefly for one.
                for _ in range(100):
                    if saved_tickets:
                        break
                    await asyncio.sleep(0.01)
                if saved_tickets:
                    with open(args.session_ticket, "wb") as f:
                        pickle.dump(saved_tickets[-1], f)
    except ConnectionError as error:
        reason = protocols[0].close_reason if protocols else None
        raise ConnectionError(str(error) or reason or "connection failed") from None


def main(argv=None):
    args = parse_args(argv)
    logging.getLogger("quic").addHandler(logging.NullHandler())  # errors are reported below
    try:
        asyncio.run(asyncio.wait_for(run(args), timeout=args.timeout))
    except asyncio.TimeoutError:
        print(f"h3_client: error: timed out after {args.timeout:g} s", file=sys.stderr)
        return 1
    except Exception as error:  # one line, whatever went wrong
        print(f"h3_client: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
