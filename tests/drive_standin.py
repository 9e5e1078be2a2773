"""A stand-in for Google Drive's public download endpoints (and the Hugging Face hub) on 127.0.0.1.

It answers as Drive does today: ``/uc?export=download&id=ID`` redirects (303) a small file to
``/download?id=ID&export=download`` (drive.usercontent.google.com on the real service), and answers a
large one with the "Virus scan warning" page whose ``download-form`` carries ``id``, ``export``,
``confirm`` and ``uuid``; ``/download`` without the right ``confirm`` / ``uuid`` shows that page
again. Files are served with ``Content-Disposition: attachment`` and honour ``Range`` (206 with
``Content-Range``; 416 with ``bytes */SIZE`` past the end). Faults on request: cut a response after
half its body (``interrupt``), announce and send a different file (``substitute``), or answer with
Drive's quota page (``quota``). Every request is recorded (path, Range header).
"""

import html
import threading
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

LARGE_FILE_BYTES = 1 << 20  # above this, the stand-in asks for confirmation (Drive: ~100 MB)
WARNING_PAGE = (
    '<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title><meta http-equiv="content-type" '
    'content="text/html; charset=utf-8"/></head><body><div class="uc-main"><div id="uc-text"><p '
    'class="uc-warning-caption">Google Drive can\'t scan this file for viruses.</p><p class="uc-warning-subcaption">'
    '<span class="uc-name-size"><a href="/open?id={id}">{name}</a> ({size})</span> is too large for Google to scan '
    'for viruses. Would you still like to download this file?</p><form id="download-form" action="{action}" '
    'method="get"><input type="submit" id="uc-download-link" class="goog-inline-block jfk-button '
    'jfk-button-action" value="Download anyway"/><input type="hidden" name="id" value="{id}"><input '
    'type="hidden" name="export" value="download"><input type="hidden" name="confirm" value="t"><input '
    'type="hidden" name="uuid" value="{uuid}"></form></div></div><div class="uc-footer"><hr class="uc-footer-divider">'
    '</div></body></html>'
)
QUOTA_PAGE = (
    '<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body><div class="uc-main">'
    '<div id="uc-text"><p class="uc-error-caption">Sorry, you can\'t view or download this file at this time.</p>'
    '<p class="uc-error-subcaption">Too many users have viewed or downloaded this file recently. Please try '
    'accessing the file again later. If the file you are trying to access is particularly large or is shared '
    'with many people, it may take up to 24 hours to be able to view or download the file.</p></div></div>'
    '</body></html>'
)


@dataclass
class DriveStandIn:
    """The served files (Drive id -> (file name, path of the bytes)) and the faults to inject."""

    files: Dict[str, Tuple[str, Path]] = field(default_factory=dict)
    interrupt: Dict[str, int] = field(default_factory=dict)  # id -> how many more responses to cut short
    substitute: Dict[str, bytes] = field(default_factory=dict)  # id -> other bytes served instead
    quota: Set[str] = field(default_factory=set)
    requests: List[Tuple[str, Optional[str]]] = field(default_factory=list)  # (path?query, Range)
    hub: Dict[str, bytes] = field(default_factory=dict)  # Hugging Face "repo/resolve/rev/file" -> bytes
    url: str = ""
    _uuid: str = field(default_factory=lambda: str(uuid.uuid4()))

    def add(self, file_id: str, name: str, path: Path) -> None:
        self.files[file_id] = (name, Path(path))

    def ranges(self, file_id: str) -> List[Optional[str]]:
        """The Range headers of the requests for ``file_id``'s bytes (None: from the start)."""
        return [r for path, r in self.requests if path.startswith("/download") and f"id={file_id}" in path]


def serve(stand_in: DriveStandIn):
    """Start ``stand_in`` on a free port of 127.0.0.1; returns the server (``shutdown()`` it)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def do_HEAD(self):
            self._hub(head=True)

        def do_GET(self):
            stand_in.requests.append((self.path, self.headers.get("Range")))
            parsed = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(parsed.query))
            if parsed.path == "/uc":
                return self._uc(query.get("id", ""))
            if parsed.path == "/download":
                return self._download(query)
            return self._hub(head=False)

        def _uc(self, file_id):
            if file_id in stand_in.quota:
                return self._page(QUOTA_PAGE)
            if file_id not in stand_in.files:
                return self._status(404)
            if self._size(file_id) > LARGE_FILE_BYTES:
                return self._page(self._warning(file_id))
            self.send_response(303)
            self.send_header("Location", f"{stand_in.url}/download?id={file_id}&export=download")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _download(self, query):
            file_id = query.get("id", "")
            if file_id not in stand_in.files:
                return self._status(404)
            confirmed = query.get("confirm") == "t" and query.get("uuid") == stand_in._uuid
            if self._size(file_id) > LARGE_FILE_BYTES and not confirmed:
                return self._page(self._warning(file_id))
            name, path = stand_in.files[file_id]
            size, start = self._size(file_id), 0
            if self.headers.get("Range"):
                start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                if start >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    return self.end_headers()
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            else:
                self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Disposition", f'attachment; filename="{name}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(size - start))
            self.end_headers()
            count = size - start
            if stand_in.interrupt.get(file_id, 0) > 0:
                stand_in.interrupt[file_id] -= 1
                count //= 2  # then the connection closes: the client sees a short body
                self.close_connection = True
            if file_id in stand_in.substitute:
                return self.wfile.write(stand_in.substitute[file_id][start:start + count])
            with open(path, "rb") as source:
                source.seek(start)
                while count > 0 and (chunk := source.read(min(count, 1 << 20))):
                    self.wfile.write(chunk)
                    count -= len(chunk)

        def _hub(self, *, head):
            # /{repo}/resolve/{revision}/{filename} as huggingface_hub asks for it (no xet, no redirect)
            key = urllib.parse.urlsplit(self.path).path.lstrip("/")
            if key not in stand_in.hub:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                return self.end_headers()
            data = stand_in.hub[key]
            self.send_response(200)
            self.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
            self.send_header("ETag", f'"{len(data):x}-{hash(data) & 0xffffffff:x}"')
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not head:
                self.wfile.write(data)

        def _warning(self, file_id):
            name, _ = stand_in.files[file_id]
            return WARNING_PAGE.format(id=file_id, name=html.escape(name), size=f"{self._size(file_id) >> 20}M",
                                       action=f"{stand_in.url}/download", uuid=stand_in._uuid)

        def _size(self, file_id):
            return len(stand_in.substitute[file_id]) if file_id in stand_in.substitute else \
                stand_in.files[file_id][1].stat().st_size

        def _page(self, text):
            body = text.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _status(self, code):
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    stand_in.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
