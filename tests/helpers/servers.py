"""A local HTTP server for tests: 127.0.0.1 only, a free port, stopped and joined on exit."""

from __future__ import annotations

import contextlib
import http.server
import threading
from typing import Iterator


@contextlib.contextmanager
def local_server(handler: type[http.server.BaseHTTPRequestHandler], **attributes) -> Iterator[http.server.HTTPServer]:
    """Serve ``handler`` on 127.0.0.1 in a thread; ``attributes`` are set on the server (the handler reads them
    through ``self.server``), and ``.url`` is its base address."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    for name, value in attributes.items():
        setattr(srv, name, value)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)
