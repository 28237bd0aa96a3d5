"""A fault-injecting HTTP proxy for the storage tests, on loopback, between the clients and the
storage server.

At configurable rates per request it:
- answers 503 or 429 without forwarding ("unavailable", "rate limited");
- forwards the request, then drops the connection before answering: the operation happened, the
  client does not know (the case that makes a retried non-idempotent write dangerous);
- waits `delay_s` before forwarding (a latency spike), or adds `latency_s` to every request.

Upload sessions' `Location` headers are rewritten to the proxy, so a resumable upload's later
requests pass through it too. One answer is GCS's, not the server's: a request repeated on a
resumable upload session that already completed gets the completion answer again (GCS answers 200 or
201 with the object's metadata; the server answers 404), which is what lets a client retry a final
chunk whose answer was dropped. `counts` says what was injected.
"""

import http.client
import http.server
import json
import random
import socket
import threading
import time

_STATUS = {"unavailable": 503, "rate_limited": 429}
_HOP = {
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "te",
  "trailer",
  "upgrade",
  "content-length",
}


class FaultProxy:
  def __init__(self, upstream: str, seed: int = 0):
    self.upstream = upstream.removeprefix("http://")
    self.rates = {"unavailable": 0.0, "rate_limited": 0.0, "drop": 0.0, "delay": 0.0}
    self.delay_s, self.latency_s = 1.0, 0.0
    self.counts = {k: 0 for k in (*self.rates, "forwarded")}
    self.seed, self._seen, self._lock = seed, {}, threading.Lock()
    self._completed = {}  # (method, upload session URL) -> the answer that completed it
    proxy = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"
      disable_nagle_algorithm = True  # small writes would wait for delayed ACKs: 40 ms a request

      def log_message(self, *_):
        pass

      def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
          out = b""
          while True:
            size = int(self.rfile.readline().split(b";")[0], 16)
            if not size:
              while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
              return out
            out += self.rfile.read(size)
            self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

      def _handle(self):
        body = self._body()
        fault = proxy._draw(self.command, self.path)
        if fault in _STATUS:
          err = json.dumps(
            {"error": {"code": _STATUS[fault], "message": "injected by the fault proxy"}}
          ).encode()
          self.send_response(_STATUS[fault])
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(err)))
          self.end_headers()
          self.wfile.write(err)
          return
        if fault == "delay":
          time.sleep(proxy.delay_s)
        if proxy.latency_s:
          time.sleep(proxy.latency_s)
        status, reason, headers, data = proxy._forward(self.command, self.path, self.headers, body)
        if "upload_id=" in self.path:
          key = (self.command, self.path)
          if status in (200, 201):
            proxy._completed[key] = (status, reason, headers, data)
          elif status == 404 and key in proxy._completed:
            status, reason, headers, data = proxy._completed[key]
        if fault == "drop":  # it happened upstream; the client hears nothing
          self.close_connection = True
          self.connection.shutdown(socket.SHUT_RDWR)
          return
        self.send_response(status, reason)
        for k, v in headers:
          if k.lower() not in _HOP:
            if k.lower() == "location":
              v = v.replace(f"http://{proxy.upstream}", proxy.url)
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
          self.wfile.write(data)

      do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = _handle

    class Server(http.server.ThreadingHTTPServer):
      daemon_threads = True
      request_queue_size = 1024  # tensorstore opens dozens of connections at once

      def handle_error(self, request, client_address):
        pass  # a client that hung up (it timed out, or we dropped it): nothing to report

    self._server = Server(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
    self._local = threading.local()
    threading.Thread(target=self._server.serve_forever, daemon=True).start()

  def set(self, **rates) -> "FaultProxy":
    """Fault rates as fractions of requests (unavailable=, rate_limited=, drop=, delay=); delay_s=,
    latency_s=; seed= draws a new pattern of faults (each request's count starts again)."""
    if "seed" in rates:
      with self._lock:
        self.seed, self._seen = rates.pop("seed"), {}
    for k in ("delay_s", "latency_s"):
      if k in rates:
        setattr(self, k, rates.pop(k))
    unknown = set(rates) - set(self.rates)
    assert not unknown, f"unknown fault kinds {unknown}"
    self.rates.update(rates)
    return self

  def _draw(self, method: str, path: str) -> str | None:
    """The fault for a request, drawn from (seed, method, path without its query, how many times
    that request came before): the same requests meet the same faults whatever order threads send
    them in."""
    with self._lock:
      key = (method, path.split("?")[0])
      self._seen[key] = n = self._seen.get(key, 0) + 1
      u, edge = random.Random(f"{self.seed}|{key}|{n}").random(), 0.0
      for kind, rate in self.rates.items():
        edge += rate
        if u < edge:
          self.counts[kind] += 1
          return kind
      self.counts["forwarded"] += 1
      return None

  def _forward(self, method, path, headers, body):
    conn = getattr(self._local, "conn", None)
    for attempt in range(2):  # a kept-alive connection the server closed meanwhile: reconnect once
      if conn is None:
        conn = self._local.conn = http.client.HTTPConnection(self.upstream, timeout=120)
      try:
        conn.request(
          method,
          path,
          body=body,
          headers={k: v for k, v in headers.items() if k.lower() not in _HOP},
        )
        r = conn.getresponse()
        return r.status, r.reason, r.getheaders(), r.read()
      except (http.client.HTTPException, OSError):
        conn.close()
        conn = self._local.conn = None
        if attempt:
          raise

  def close(self) -> None:
    self._server.shutdown()
    self._server.server_close()
