"""`python -m fl_defense.simulations.fleet_gate`: the SuperLink's public door, open to the Fleet API only.

Flower (1.41, 1.42) serves the Fleet API (SuperNodes), the Control API (`flwr run`, `flwr supernode register`,
...) and the ServerApp's API on one HTTPS port, and the Control API has no authentication in the open-source
SuperLink: anyone who reaches that port and trusts its certificate can register node keys or submit an app
that then runs on every machine. In this threat model the SuperNodes are the adversary, and they must reach the
port. So the SuperLink listens on loopback only, and this gate, on the address the SuperNodes reach, terminates
TLS with the SuperLink's certificate and forwards requests under `/v1/fleet/` to it (over TLS, checked against
the CA); every other path gets 403. The operator reaches the Control API from the SuperLink's machine (or
through `ssh -L`), never through the gate.
"""

from __future__ import annotations

import argparse
import http.client
import socket
import ssl
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FLEET = "/v1/fleet/"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
CHUNK = 64 * 1024
HANDSHAKE_SECONDS = 30.0


class Gate(ThreadingHTTPServer):
    """A TLS server that forwards Fleet API requests to `upstream` (host, port) and refuses the rest."""

    daemon_threads = True

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int], certfile: Path, keyfile: Path,
                 ca: Path) -> None:
        super().__init__(listen, _Handler)
        self.served = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.served.load_cert_chain(certfile, keyfile)
        self.upstream = upstream
        self.client_context = ssl.create_default_context(cafile=str(ca))

    def finish_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:  # type: ignore[override]
        """The TLS handshake in the connection's own thread, bounded: a peer that never completes it (or speaks
        plain text) holds only its own thread, never the gate."""
        request.settimeout(HANDSHAKE_SECONDS)
        try:
            tls = self.served.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            request.close()
            return
        tls.settimeout(None)
        super().finish_request(tls, client_address)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Gate

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        """Quiet: a refused request is the only thing worth a line."""

    def _refuse(self) -> None:
        body = b"fleet gate: only the Fleet API (/v1/fleet/) is served here\n"
        sys.stderr.write(f"fleet gate: refused {self.command} {self.path} from {self.client_address[0]}\n")
        self.send_response(403)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _forward(self) -> None:
        path = urllib.parse.unquote(self.path)
        if not path.startswith(FLEET) or ".." in path or "//" in path or "\\" in path:
            self._refuse()
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
        host, port = self.server.upstream
        upstream = http.client.HTTPSConnection(host, port, context=self.server.client_context, timeout=3600)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            upstream.request(self.command, self.path, body=body, headers=headers)
            reply = upstream.getresponse()
        except OSError as err:  # the SuperLink is down or restarting: the SuperNode retries
            self.send_error(502, f"the SuperLink did not answer: {err}")
            upstream.close()
            return
        try:
            self.send_response(reply.status, reply.reason)
            for key, value in reply.getheaders():
                if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Transfer-Encoding", "chunked")  # streams are passed on as they come
            self.end_headers()
            while chunk := reply.read1(CHUNK):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except OSError:  # either side went away mid-reply
            self.close_connection = True
        finally:
            upstream.close()

    do_GET = do_POST = do_PUT = do_DELETE = _forward


def serve_in_thread(gate: Gate) -> threading.Thread:
    thread = threading.Thread(target=gate.serve_forever, daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fl_defense.simulations.fleet_gate", description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", default="0.0.0.0:9092", help="HOST:PORT the SuperNodes connect to")
    p.add_argument("--superlink", default="127.0.0.1:9093", help="HOST:PORT of the SuperLink (on loopback)")
    p.add_argument("--certfile", type=Path, required=True, help="the SuperLink's TLS certificate")
    p.add_argument("--keyfile", type=Path, required=True, help="its private key")
    p.add_argument("--ca", type=Path, required=True, help="the CA certificate the SuperLink's is checked against")
    args = p.parse_args(argv)
    (lhost, _, lport), (uhost, _, uport) = args.listen.rpartition(":"), args.superlink.rpartition(":")
    try:
        gate = Gate((lhost, int(lport)), (uhost, int(uport)), args.certfile, args.keyfile, args.ca)
    except (OSError, ValueError, ssl.SSLError) as err:
        print(f"fleet gate: cannot serve {args.listen}: {err}", file=sys.stderr)
        return 2
    print(f"fleet gate: {args.listen} -> {args.superlink} (Fleet API only)", flush=True)
    try:
        gate.serve_forever()
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
