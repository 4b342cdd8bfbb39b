"""``make serve``: the HTTP API on 127.0.0.1 (default port 3000) backed by the local runtime,
with an example landing page at ``/``. A background thread delivers events and writes
the outbox, so a form POST produces an .eml moments later."""
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from funnelpilot.local.runtime import Runtime

SITE = Path(__file__).with_name("site")


def make_handler(rt: Runtime):
    class Handler(BaseHTTPRequestHandler):
        server_version = "funnelpilot-local"

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else None
            if method == "GET" and self.path.split("?")[0] in ("/", "/index.html"):
                return self._send(200, {"content-type": "text/html; charset=utf-8"},
                                  (SITE / "index.html").read_bytes())
            headers = {k: v for k, v in self.headers.items()}
            resp = rt.http(method, self.path, body=body, headers=headers, source_ip=self.client_address[0])
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

        def do_OPTIONS(self):  # noqa: N802
            self._serve("OPTIONS")

        def log_message(self, fmt, *args):  # request lines only, never bodies (PII)
            print(f"  {self.command} {self.path.split('?')[0][:60]} -> {args[1] if len(args) > 1 else ''}")

    return Handler


def serve(port: int = 3000, speed: float = 86_400.0) -> None:
    base = f"http://127.0.0.1:{port}"
    with Runtime(speed=speed, public_url=base) as rt:
        stop = threading.Event()

        def pump() -> None:
            while not stop.is_set():
                rt.pump()
                rt.flush_outbox()
                stop.wait(0.05)

        threading.Thread(target=pump, daemon=True).start()
        server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(rt))
        print(f"funnelpilot local API on {base}  (landing page: {base}/)")
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
            stop.set()
            server.server_close()
