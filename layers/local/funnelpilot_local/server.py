"""``make serve``: the HTTP API on 127.0.0.1 (default port 3000) backed by the local runtime,
with an example site: the landing page at ``/`` and a page for every link the shipped emails
contain (``site/<path>.html``, a whole document or a body in ``site/_page.html``; ``site/<dir>/_any.html``
answers ``/<dir>/<any name>``).

Time: the runtime is stepped (the demo's deterministic clock) and a ticker thread moves it
``speed`` simulated seconds per real second (1 = real time, the ``make serve`` default), so a
wait, a double opt-in link's expiry or a schedule fall due exactly as on AWS, only sooner when
asked. The ticker also delivers events and writes the outbox, so a form POST produces an .eml
moments later.

State across restarts: moto keeps its backends in memory only, and a running Step Functions
execution is a thread that cannot be saved. The server therefore keeps a journal of every API
request (``<state dir>/serve-journal.jsonl``, with the simulated time it arrived at) and, on the
next start, replays it on the stepped clock before it listens: tables, journeys waiting in
their funnels, schedules and counters are re-created by the same code that made them. The
clock stands still while the server is stopped.

The site is the same server under a second name, ``http://localhost:<port>`` (``SiteUrl``):
email links to it are tracked and carry the visitor's ``fp`` token, as they would for a
real site on its own domain, and both names are allowed origins for ``/collect``."""
import base64
import json
import re
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from funnelpilot_local.runtime import Runtime

SITE = Path(__file__).with_name("site")
JOURNAL = "serve-journal.jsonl"
JOURNAL_VERSION = 1
TICK = 0.1  # real seconds between two moves of the clock
_PAGE = re.compile(r"^/([a-z0-9-]+(?:/[a-z0-9-]+)?)$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]*$", re.IGNORECASE)
# What API Gateway answers when a function's response is malformed (502) or the call fails (500).
_GATEWAY_ERROR = {"content-type": "application/json"}, json.dumps({"message": "Internal Server Error"}).encode()
# Request headers a replay needs (the functions read these); others are left out of the journal.
_KEPT_HEADERS = {"content-type", "accept", "origin", "referer", "user-agent", "x-api-key", "cookie"}


def page(path: str) -> Path | None:
    """The example site's page for a request path: ``/`` -> ``index.html``, ``/a`` or ``/a/b`` ->
    ``a.html`` / ``a/b.html``, else ``/a/<name>`` -> ``a/_any.html`` (e.g. a download by its lead magnet)."""
    path = path.split("?")[0].split("#")[0]
    if path in ("/", "/index.html"):
        return SITE / "index.html"
    m = _PAGE.match(path)
    if not m:
        return None
    exact = SITE / f"{m.group(1)}.html"
    if exact.is_file():
        return exact
    section, _, name = m.group(1).partition("/")
    fallback = SITE / section / "_any.html"
    return fallback if name and _SLUG.match(name) and fallback.is_file() else None


def page_html(path: Path) -> bytes:
    """A page file as served: a whole document as it is; else its body inside ``site/_page.html``
    (the head, styles, tracker snippet and navigation the example pages share), titled by its ``<h1>``."""
    text = path.read_text()
    if text.lstrip().lower().startswith("<!doctype"):
        return text.encode()
    title = re.search(r"<h1>(.*?)</h1>", text).group(1)
    return (SITE / "_page.html").read_text().replace("{title}", title).replace("{body}", text.strip()).encode()


def make_handler(server: "LocalServer"):
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
                                      page_html(site_page) if method == "GET" else b"")
                headers = {k: v for k, v in self.headers.items()}
                resp = server.call(method, self.path, body, headers, self.client_address[0])
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


class Journal:
    """The API requests a server answered, one JSON line each (``t``: simulated time), after a
    header line; ``{"t": ...}`` lines alone say how far the clock went. A torn last line (the
    process killed while writing) is ignored."""

    def __init__(self, path: Path):
        self.path = path
        self.start: float | None = None  # the simulated time the journal began at
        self.entries: list[dict] = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    break
                if self.start is None:
                    if record.get("version") != JOURNAL_VERSION:
                        print(f"  {path}: another version's journal: starting afresh")
                        break
                    self.start = record["start"]
                else:
                    self.entries.append(record)
        if self.start is None:
            self.entries = []
        self._file = None
        self._lock = threading.Lock()

    @property
    def last_time(self) -> float | None:
        return self.entries[-1]["t"] if self.entries else self.start

    def open(self, start: float) -> None:
        """Append from now on (a new journal begins at ``start``)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.start is None:
            self.start = start
            self.path.write_text(json.dumps({"version": JOURNAL_VERSION, "start": start}) + "\n")
        self._file = open(self.path, "a")

    def write(self, record: dict) -> None:
        with self._lock:
            if self._file:
                self._file.write(json.dumps(record) + "\n")
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file:
                self._file.close()
                self._file = None


class LocalServer:
    """The runtime, its ticker and the HTTP server on 127.0.0.1:``port``.
    ``serve_forever()`` in the foreground (make serve) or ``start()`` in a thread (tests).
    ``speed``: simulated seconds per real second; ``fresh``: forget the journal and start over."""

    def __init__(self, port: int = 3000, speed: float = 86_400.0, *, fresh: bool = False,
                 state_dir: Path | None = None, **runtime_args):
        if speed <= 0:
            raise ValueError("speed must be a positive number of simulated seconds per real second")
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.site = f"http://localhost:{port}"
        self.speed = float(speed)
        self.rt = Runtime(stepped=True, start=time.time(), public_url=self.base, parameters=site_parameters(port),
                          state_dir=state_dir, **runtime_args)
        path = self.rt.state_dir / JOURNAL
        if fresh and path.exists():
            path.unlink()
        self.journal = Journal(path)
        if self.journal.start is not None:
            self.rt.start_time = self.journal.start  # the clock resumes where the journal began
        self.replayed = 0
        self._lock = threading.RLock()  # one request or clock move at a time: the stepped runtime's rule
        self._stop = threading.Event()
        self._serving = False

    def __enter__(self) -> "LocalServer":
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), make_handler(self))  # a busy port: before the runtime
        try:
            self.rt.start()
            self._replay()
        except BaseException:
            self.rt.stop()
            self.httpd.server_close()
            raise
        from funnelpilot import clock

        self.journal.open(clock.now())
        threading.Thread(target=self._tick, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        from funnelpilot import clock

        self._stop.set()
        if self._serving:
            self.httpd.shutdown()
        self.httpd.server_close()
        with self._lock:
            self.journal.write({"t": clock.now()})  # the clock resumes from here
            self.journal.close()
            self.rt.stop()

    def serve_forever(self) -> None:
        self._serving = True
        self.httpd.serve_forever()

    def start(self) -> "LocalServer":
        self._serving = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def call(self, method: str, path: str, body: bytes | None, headers: dict, source_ip: str):
        """One API request, journaled first (so a crash mid-request still replays it)."""
        from funnelpilot import clock

        with self._lock:
            kept = {k.lower(): v for k, v in headers.items() if k.lower() in _KEPT_HEADERS}
            self.journal.write({"t": clock.now(), "method": method, "path": path, "headers": kept, "ip": source_ip,
                                "body": base64.b64encode(body).decode() if body else None})
            return self.rt.http(method, path, body=body, headers=headers, source_ip=source_ip)

    def _replay(self) -> None:
        """Re-create the last run's state: every journaled request at its simulated time."""
        from funnelpilot import clock

        entries = self.journal.entries
        if not entries:
            return
        print(f"  replaying {sum('method' in e for e in entries)} requests of the last run "
              f"({JOURNAL}; `funnelpilot serve --fresh` starts over)...")
        for entry in entries:
            self.rt.advance(max(0.0, entry["t"] - clock.now()))
            if "method" in entry:
                body = base64.b64decode(entry["body"]) if entry.get("body") else None
                try:
                    self.rt.http(entry["method"], entry["path"], body=body, headers=entry["headers"],
                                 source_ip=entry["ip"])
                except Exception:  # noqa: BLE001 - it failed the first time too (a 500 then)
                    traceback.print_exc()
                self.replayed += 1
        self.rt.settle()

    def _tick(self) -> None:
        """Move the clock ``speed`` simulated seconds per real second; each move delivers what is due."""
        from funnelpilot import clock

        real0, sim0 = time.monotonic(), clock.now()
        while not self._stop.wait(TICK):
            with self._lock:
                if self._stop.is_set():
                    return
                target = sim0 + (time.monotonic() - real0) * self.speed
                if not self.rt.advance(max(0.0, target - clock.now())):
                    print("  the local runtime did not settle within 120 s (see the errors above)")
                self.rt.flush_outbox()


def describe_speed(speed: float) -> str:
    if speed == 1:
        return "real time"
    day = 86_400 / speed
    return f"{speed:g}x: one simulated day every {day:g} s" if day >= 1 else f"{speed:g}x"


def serve(port: int = 3000, speed: float = 1.0, fresh: bool = False) -> None:
    from funnelpilot_local import contacts_cli

    with LocalServer(port, speed, fresh=fresh) as server:
        rt, base = server.rt, server.base
        with server._lock:  # the contacts `funnelpilot contacts import` wrote, over the replayed ones
            table = contacts_cli.load_table(rt, rt.state_dir)
        print(f"funnelpilot local API on {base}  (landing page: {base}/ , the same site as http://localhost:{port}/)")
        print(f"  routes: {', '.join(sorted({f'{r.method} {r.path}' for r in rt.routes}))}")
        print(f"  emails are written to {rt.outbox}/  - clock: {describe_speed(speed)} (--speed N: N simulated "
              "seconds per real second)")
        print(f"  state is kept in {server.journal.path} (replayed at the next start; --fresh starts over)")
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
