"""``make serve``: the HTTP API on 127.0.0.1 (default port 3000) backed by the local runtime,
with an example site: the landing page at ``/`` and pages such as ``/pricing`` (``site/*.html``).
A background thread delivers events and writes the outbox, so a form POST produces an .eml
moments later.

The site is the same server under a second name, ``http://localhost:<port>`` (``SiteUrl``):
email links to it are tracked and carry the visitor's ``fp`` token, as they would for a
real site on its own domain, and both names are allowed origins for ``/collect``."""
import json
import re
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from funnelpilot_local.runtime import Runtime

SITE = Path(__file__).with_name("site")
_PAGE = re.compile(r"^/([a-z0-9-]+)$")
# What API Gateway answers when a function's response is malformed (502) or the call fails (500).
_GATEWAY_ERROR = {"content-type": "application/json"}, json.dumps({"message": "Internal Server Error"}).encode()


def page(path: str) -> Path | None:
    """The example site's page for a request path (``/`` and ``/<name>`` -> ``site/<name>.html``)."""
    path = path.split("?")[0].split("#")[0]
    if path in ("/", "/index.html"):
        return SITE / "index.html"
    m = _PAGE.match(path)
    return SITE / f"{m.group(1)}.html" if m and (SITE / f"{m.group(1)}.html").is_file() else None


def make_handler(rt: Runtime):
    class Handler(BaseHTTPRequestHandler):
        server_version = "funnelpilot-local"

        def _serve(self, method: str) -> None:
            """Every request gets an answer, never a dropped connection: a failure in the runtime
            is a 500, a response header that HTTP cannot carry (not Latin-1) a 502, as on AWS."""
            try:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                site_page = page(self.path) if method in ("GET", "HEAD") else None
                if site_page:
                    return self._send(200, {"content-type": "text/html; charset=utf-8"},
                                      site_page.read_bytes() if method == "GET" else b"")
                headers = {k: v for k, v in self.headers.items()}
                resp = rt.http(method, self.path, body=body, headers=headers, source_ip=self.client_address[0])
            except Exception:  # noqa: BLE001 - logged, answered like API Gateway
                traceback.print_exc()
                return self._send(500, *_GATEWAY_ERROR)
            try:
                for key, value in resp.headers.items():
                    f"{key}: {value}".encode("latin-1")
            except UnicodeEncodeError:
                print(f"  response header not Latin-1 ({key}): answered 502 as API Gateway would")
                return self._send(502, *_GATEWAY_ERROR)
            self._send(resp.status, resp.headers, resp.body if method != "HEAD" else b"")

        def _send(self, status: int, headers: dict, body: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                if key != "content-length":
                    self.send_header(key, value)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 - http.server's naming
            self._serve("GET")

        def do_HEAD(self):  # noqa: N802
            self._serve("HEAD")

        def do_POST(self):  # noqa: N802
            self._serve("POST")

        def do_DELETE(self):  # noqa: N802
            self._serve("DELETE")

        def do_PATCH(self):  # noqa: N802
            self._serve("PATCH")

        def do_OPTIONS(self):  # noqa: N802
            self._serve("OPTIONS")

        def log_message(self, fmt, *args):  # request lines only, never bodies (PII)
            print(f"  {self.command} {self.path.split('?')[0][:60]} -> {args[1] if len(args) > 1 else ''}")

    return Handler


def site_parameters(port: int) -> dict:
    """Template parameters for a local server on ``port``: the site under a second host name."""
    return {"SiteUrl": f"http://localhost:{port}",
            "CorsOrigins": f"http://127.0.0.1:{port},http://localhost:{port}"}


class LocalServer:
    """The runtime, its event pump and the HTTP server on 127.0.0.1:``port``.
    ``serve_forever()`` in the foreground (make serve) or ``start()`` in a thread (tests)."""

    def __init__(self, port: int = 3000, speed: float = 86_400.0, **runtime_args):
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.site = f"http://localhost:{port}"
        self.rt = Runtime(speed=speed, public_url=self.base, parameters=site_parameters(port), **runtime_args)
        self._stop = threading.Event()
        self._serving = False

    def __enter__(self) -> "LocalServer":
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), make_handler(self.rt))  # a busy port: before the runtime
        try:
            self.rt.start()
        except BaseException:
            self.httpd.server_close()
            raise
        threading.Thread(target=self._pump, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._serving:
            self.httpd.shutdown()
        self.httpd.server_close()
        self.rt.stop()

    def serve_forever(self) -> None:
        self._serving = True
        self.httpd.serve_forever()

    def start(self) -> "LocalServer":
        self._serving = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def _pump(self) -> None:
        while not self._stop.is_set():
            self.rt.pump()
            self.rt.flush_outbox()
            self._stop.wait(0.05)


def serve(port: int = 3000, speed: float = 86_400.0) -> None:
    from funnelpilot_local import contacts_cli

    with LocalServer(port, speed) as server:
        rt, base = server.rt, server.base
        table = contacts_cli.load_table(rt, rt.state_dir)  # the contacts `funnelpilot contacts import` wrote
        print(f"funnelpilot local API on {base}  (landing page: {base}/ , the same site as http://localhost:{port}/)")
        print(f"  routes: {', '.join(sorted({f'{r.method} {r.path}' for r in rt.routes}))}")
        print(f"  emails are written to {rt.outbox}/  - one simulated day passes every {86400 / speed:g} s")
        print(f"  admin routes (IAM auth on AWS): send  x-api-key: {rt.admin_key}")
        for name, spec in rt.template.doc.get("Parameters", {}).items():
            if spec.get("NoEcho"):
                print(f"  {name} (local value): {rt.template.parameters[name]}  - {spec.get('Description', '')}")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            contacts_cli.save_table(rt, table)
