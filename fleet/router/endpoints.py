"""The router's HTTP endpoints: routes, signed control (gate, halt, resume), orders, health.

One thread per connection (socketserver) and one request per connection, except GET /health asked
with `Connection: keep-alive` (deployctl watch reads every router once a second over one
connection); every answer is JSON, and no exception a handler raises stops the server.
"""

import socketserver

import httpwire
from book import validate_gate_request, validate_order
from httpwire import BadRequest, HttpError, parse_json
from service import log

ACTOR_HEADER = "X-Deployctl-Actor"  # who asked, for the node journal (signed with the request)
# Besides the framing ones, given once only: a second value must not sneak past the signature.
SINGLE_HEADERS = ("x-deployctl-timestamp", "x-deployctl-nonce", "x-deployctl-signature", ACTOR_HEADER.lower())


class Handler(socketserver.StreamRequestHandler):
    """JSON over HTTP for one Router (self.server.router)."""

    timeout = 10  # a stalled client must not hold a thread forever
    ROUTES = {
        "/health": {"GET": "_get_health"},
        "/orders": {"POST": "_post_orders"},
        "/control/gate": {"POST": "_post_gate"},
        "/control/halt": {"POST": "_post_halt"},
        "/control/resume": {"POST": "_post_resume"},
    }

    def handle(self):
        """Read one request and answer it; the connection closes after every answer but a kept-alive health read."""
        self.command, self.keep_alive = None, True
        try:
            while self.keep_alive and self._read_request():
                self.keep_alive = (self.command == "GET" and httpwire.request_path(self.path) == "/health"
                                   and self.headers.get("connection", "").lower() == "keep-alive"
                                   and not self.headers.get("content-length") and not self.headers.get("transfer-encoding"))
                self._dispatch(self.command)
        except HttpError as error:  # the request itself is malformed: answer and close
            log(f"http {self.client_address[0]}: {error.status} {error.message}")
            self._send_json(error.status, error.body(), with_body=self.command != "HEAD")
        except TimeoutError:
            log(f"http {self.client_address[0]}: request timed out")
        except (ConnectionError, OSError):
            pass  # the client went away: nobody to answer

    def _read_request(self):
        """Parse the request line and header fields into command, path, headers; False on a silent close."""
        request_line = httpwire.read_request_line(self.rfile)
        if request_line is None:
            return False
        # command first: a HEAD with bad header fields is still answered without a body
        self.command, self.path, self.request_version = request_line
        self.headers = httpwire.read_headers(self.rfile, SINGLE_HEADERS)
        return True

    def _dispatch(self, method):
        """Route the request to its method and send the JSON answer; never lets an exception escape."""
        router, path = self.server.router, httpwire.request_path(self.path)[:200]
        headers = {}
        try:
            status, body = 200, self._route(method, path)
        except HttpError as error:
            status, body, headers = error.status, error.body(), error.headers
        except (TimeoutError, ConnectionError):
            return  # the client went away mid-request: nobody to answer
        except Exception as error:  # the server keeps running whatever a handler does
            router.count("errors")
            log(f"internal error on {method} {path}: {error!r}")
            status, body = 500, {"error": "internal error"}
        if status >= 400 and status != 401:
            log(f"{method} {path} from {self.client_address[0]}: {status} {body['error']}")
        self._send_json(status, body, headers, with_body=method != "HEAD")

    def _route(self, method, path):
        methods = self.ROUTES.get(path)
        if methods is None:
            raise HttpError(404, f"no such path {path}")
        if method not in methods:
            raise HttpError(405, f"{method} not allowed on {path}", headers={"Allow": ", ".join(methods)})
        return getattr(self, methods[method])()

    def _send_json(self, status, body, headers=None, with_body=True):
        answer = httpwire.json_answer(status, body, headers, with_body, self.keep_alive and status == 200)
        self.keep_alive = self.keep_alive and status == 200
        try:
            self.wfile.write(answer)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _read_body(self):
        """Read the body; return (bytes, None) or (None, reason it is unacceptable): see httpwire.read_body."""
        return httpwire.read_body(self.rfile, self.headers)

    def _json_body(self, raw, reason):
        """Return the parsed body; BadRequest if it was unacceptable or is not JSON."""
        if reason:
            raise BadRequest(reason)
        try:
            return parse_json(raw)
        except ValueError as error:
            raise BadRequest(f"body: malformed JSON: {error}") from None

    def _get_health(self):
        return self.server.router.health()

    def _post_orders(self):
        router = self.server.router
        raw, reason = self._read_body()  # always read it: see httpwire.read_body
        blocker = router.routing_blocker()
        if blocker:
            raise HttpError(503, blocker)
        try:
            order = validate_order(self._json_body(raw, reason), router.config["max_order_qty"])
            return router.place(order)
        except HttpError as error:
            if error.status in (400, 409):
                router.count("rejected")
            raise

    def _control(self, action):
        """Check the signature, then run action(raw, reason) and log the outcome; 401 naming why otherwise."""
        router, path, client = self.server.router, httpwire.request_path(self.path), self.client_address[0]
        raw, reason = self._read_body()
        refusal = router.check_signature(self.command, self.path, raw, self.headers)
        if refusal:
            log(f"refused control request {path} from {client}: {refusal[0]}")
            raise HttpError(401, f"unauthorized: {refusal[0]}", extra=refusal[1])
        health = action(raw, reason)
        log(f"control {path} from {client}: gate {health['gate']}, halted {str(health['halted']).lower()}")
        router.journal(path.rsplit("/", 1)[-1], self.headers.get(ACTOR_HEADER), health)
        return health

    def _post_gate(self):
        def gate(raw, reason):
            action, digest = validate_gate_request(self._json_body(raw, reason))
            return self.server.router.set_gate(action, digest)
        return self._control(gate)

    def _post_halt(self):
        # The body is ignored: a kill switch must not fail on its payload.
        return self._control(lambda raw, reason: self.server.router.halt())

    def _post_resume(self):
        return self._control(lambda raw, reason: self.server.router.resume())


class RouterServer(socketserver.ThreadingTCPServer):
    """One thread per connection; more connections queued than the default 5; quick rebinding."""

    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 64
