"""A fake Hugging Face hub on 127.0.0.1: the few HTTP endpoints ``snapshot_download`` uses.

It serves one repository at one commit from a folder, answers everything else
with 404 (as the hub does for an unknown repo or revision), and records every
request path so a test can see exactly what was fetched. ``tamper`` replaces a
file's bytes as served, as a compromised mirror would.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = ["FakeHub"]


class FakeHub:
    def __init__(self, repo: str, revision: str, folder: Path) -> None:
        self.repo, self.revision = repo, revision
        self.files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
        self.paths: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def tamper(self, name: str) -> None:
        data = bytearray(self.files[name])
        data[len(data) // 2] ^= 0x01
        self.files[name] = bytes(data)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, method: str, raw_path: str) -> tuple[int, dict[str, str], bytes]:
        path = unquote(urlsplit(raw_path).path)
        with self._lock:
            self.paths.append(f"{method} {path}")
        api = f"/api/models/{self.repo}/"
        if path in (api + f"revision/{self.revision}", f"/api/models/{self.repo}"):
            body = {
                "id": self.repo,
                "sha": self.revision,
                "siblings": [{"rfilename": name} for name in self.files],
            }
            return 200, {"content-type": "application/json"}, json.dumps(body).encode()
        if path.startswith(api + f"tree/{self.revision}"):
            entries = [
                {
                    "type": "file",
                    "path": name,
                    "size": len(data),
                    "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),  # git's blob id
                }
                for name, data in self.files.items()
            ]
            return 200, {"content-type": "application/json"}, json.dumps(entries).encode()
        prefix = f"/{self.repo}/resolve/{self.revision}/"
        if path.startswith(prefix) and path[len(prefix) :] in self.files:
            data = self.files[path[len(prefix) :]]
            headers = {
                "content-type": "application/octet-stream",
                "x-repo-commit": self.revision,
                "etag": f'"{hashlib.sha256(data).hexdigest()}"',
            }
            return 200, headers, data
        missing = {"content-type": "application/json", "x-error-code": "EntryNotFound"}
        return 404, missing, b'{"error":"not found"}'

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, method: str) -> None:
                status, headers, body = hub._answer(method, self.path)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                if method == "GET":
                    self.wfile.write(body)

            def do_GET(self) -> None:
                self._reply("GET")

            def do_HEAD(self) -> None:
                self._reply("HEAD")

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler
