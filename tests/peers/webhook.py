#!/usr/bin/env python3
"""A SIEM's webhook receiver for the tests: an HTTP server that takes POSTed
JSON arrays of audit records and appends each record, as one JSON line, to a
file. It refuses the first --fail requests with 503, as a SIEM that is
starting up or overloaded does. With --tls it serves HTTPS with that
certificate and key (PEM files); with --authorization it answers 401 to
requests whose Authorization header is not that value.

    webhook.py --port PORT --out FILE [--fail N] [--tls CERT KEY]
               [--authorization VALUE]

It prints "ready" once it listens.
"""
import argparse
import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--fail", type=int, default=0)
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    parser.add_argument("--authorization")
    args = parser.parse_args()
    state = {"failures_left": args.fail}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if (
                args.authorization is not None
                and self.headers.get("Authorization") != args.authorization
            ):
                self.send_response(401)
                self.end_headers()
                return
            if state["failures_left"] > 0:
                state["failures_left"] -= 1
                self.send_response(503)
                self.end_headers()
                return
            try:
                records = json.loads(body)
                assert isinstance(records, list)
            except (ValueError, AssertionError):
                self.send_response(400)
                self.end_headers()
                return
            lines = "".join(json.dumps(record) + "\n" for record in records)
            with open(args.out, "a", encoding="utf-8") as out:
                out.write(lines)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    if args.tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*args.tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
