"""A model mirror on 127.0.0.1 for the tests of `vnp models`: the Hugging Face hub endpoints that
`huggingface_hub.snapshot_download` uses (through `HF_ENDPOINT`) and plain file URLs (the ESM
checkpoint, the classifiers), in a thread. No internet is needed; the real download code runs.

Hub requests answered (those huggingface_hub makes for a snapshot):
    GET  /api/models/{repo}/revision/{revision}      -> {"id", "sha": commit, "siblings"}
    GET  /api/models/{repo}/tree/{commit}?recursive=  -> [{"type": "file", "path", "size", "oid"}]
    HEAD/GET /{repo}/resolve/{revision}/{filename}    -> the bytes, X-Repo-Commit, ETag, ranges
Any other path is a plain file from `files`.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Mirror:
    """What the server holds and what it was asked; `drop_once` paths send half their bytes on the
    first full GET, then close the connection."""

    files: dict[str, bytes] = field(default_factory=dict)  # "/path" -> bytes
    repos: dict[str, tuple[str, dict[str, bytes]]] = field(default_factory=dict)  # repo -> (commit, files)
    drop_once: set[str] = field(default_factory=set)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def lookup(self, path: str) -> tuple[bytes | None, dict | None, str | None]:
        """(file bytes, JSON document, commit) for a request path."""
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
            repo = "/".join(parts[2:4])
            if repo not in self.repos:
                return None, None, None
            commit, content = self.repos[repo]
            if parts[4] == "revision":
                return None, {"id": repo, "sha": commit, "siblings": [{"rfilename": n} for n in content]}, commit
            return None, [{"type": "file", "path": n, "size": len(b), "oid": git_blob_id(b)}
                          for n, b in sorted(content.items())], commit
        if len(parts) >= 5 and parts[2] == "resolve" and "/".join(parts[:2]) in self.repos:
            commit, content = self.repos["/".join(parts[:2])]
            return content.get("/".join(parts[4:])), None, commit
        return self.files.get("/" + "/".join(parts)), None, None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    mirror: Mirror

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        mirror = self.mirror
        with mirror.lock:
            mirror.requests.append((self.command, path, self.headers.get("Range")))
        data, doc, commit = mirror.lookup(path)
        if doc is not None:
            body = json.dumps(doc).encode()
            self._send(200, body, head, {"Content-Type": "application/json"})
            return
        if data is None:
            self._send(404, b'{"error": "not found"}', head, {"Content-Type": "application/json"})
            return
        headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "Accept-Ranges": "bytes"}
        if commit:
            headers["X-Repo-Commit"] = commit
        start = self._range_start()
        if start is not None and 0 < start < len(data):
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            self._send(206, data[start:], head, headers)
            return
        with mirror.lock:
            drop = not head and path in mirror.drop_once
            if drop:
                mirror.drop_once.discard(path)
        if drop:  # promise every byte, send half, hang up
            self.send_response(200)
            for key, value in {**headers, "Content-Length": str(len(data))}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(200, data, head, headers)

    def _range_start(self) -> int | None:
        value = self.headers.get("Range", "")
        if value.startswith("bytes=") and value.endswith("-"):
            return int(value[6:-1])
        return None

    def _send(self, status: int, body: bytes, head: bool, headers: dict) -> None:
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)


class MirrorServer:
    """`with MirrorServer(mirror) as url:` serves `mirror` at `url` (http://127.0.0.1:PORT)."""

    def __init__(self, mirror: Mirror):
        handler = type("Handler", (_Handler,), {"mirror": mirror})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class Blackhole:
    """A port that accepts connections (the kernel completes the handshake) and never answers."""

    def __enter__(self) -> str:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def __exit__(self, *exc) -> None:
        self.sock.close()
