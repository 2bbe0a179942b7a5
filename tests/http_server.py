"""A static HTTP server for the remote-store tests: a directory served on a free local port from a thread, like
``python -m http.server`` (its HTML directory listing included), with or without Range requests, and faults to inject:
a connection dropped after N bytes of a file, a slow body, a hook run on each request (to change a file between two
reads)."""

from __future__ import annotations

import http.server
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlsplit


@dataclass
class Faults:
    drop: dict[str, int] = field(default_factory=dict)  # path suffix -> bytes sent before the connection dies (once)
    delay: float = 0.0  # seconds slept before each 64 KiB of a body
    stall: dict[str, int] = field(default_factory=dict)  # path suffix -> bytes sent before the body stalls (once)
    on_request: Callable[[str], None] | None = None  # called with the path of each GET, before it is served


@dataclass
class Served:
    """A running server: its URL, the requests it got (path, Range header or None), and its faults."""

    url: str
    root: Path
    faults: Faults
    requests: list[tuple[str, str | None]]
    server: http.server.ThreadingHTTPServer

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve(root: Path, ranges: bool = True, faults: Faults | None = None) -> Served:
    """Serve ``root`` on 127.0.0.1 (a free port) until ``stop()``; ``ranges=False``: Range headers are ignored (the
    whole file, status 200), as some servers and proxies do."""
    faults = faults or Faults()
    log: list[tuple[str, str | None]] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            path = unquote(urlsplit(self.path).path)
            log.append((path, self.headers.get("Range")))
            if faults.on_request is not None:
                faults.on_request(path)
            file = root / path.lstrip("/")
            if not file.is_file():
                return super().do_GET()  # a directory's listing, or a 404
            self._send_file(path, file.read_bytes())

        def _send_file(self, path: str, data: bytes) -> None:
            start = 0
            m = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
            if ranges and m and int(m.group(1)) < len(data):
                start = int(m.group(1))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("Accept-Ranges", "bytes" if ranges else "none")
            self.end_headers()
            drop = next((n for suffix, n in faults.drop.items() if path.endswith(suffix)), None)
            stall = next((n for suffix, n in faults.stall.items() if path.endswith(suffix)), None)
            body = data[start:]
            if stall is not None:  # a client killed meanwhile has these bytes on its disk
                faults.stall = {k: v for k, v in faults.stall.items() if not path.endswith(k)}
                self.wfile.write(body[:stall])
                self.wfile.flush()
                time.sleep(30)
                return
            if drop is not None:
                faults.drop = {k: v for k, v in faults.drop.items() if not path.endswith(k)}  # once
                self.wfile.write(body[:drop])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # the server "dies" mid-file
                return
            for i in range(0, len(body), 1 << 16):
                if faults.delay:
                    time.sleep(faults.delay)
                self.wfile.write(body[i:i + (1 << 16)])

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return Served(f"http://127.0.0.1:{server.server_address[1]}", root, faults, log, server)
