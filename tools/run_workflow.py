#!/usr/bin/env python3
"""Run an API-format workflow on a running ComfyUI server through its HTTP API (standard library only).

    python tools/run_workflow.py example_workflows/api/attribute_edit.json --video clip.mp4 \
        --set scale=0.4 --set checkpoint=dva.safetensors --out edited.mp4

Steps: upload the video (POST /upload/image, which stores any file in ComfyUI's input folder), put
its name into the workflow's video loader, apply ``--set`` overrides, POST /prompt, follow progress
over the /ws websocket (falling back to polling /history), and download the outputs via /view.
``--set NAME=VALUE`` sets input NAME on every node that has it; ``--set NODE.NAME=VALUE`` on node
NODE only. Values are parsed as JSON when they parse (numbers, true/false), else kept as strings.
Exit status: 0 on success, 1 when the server reports an error, 2 for bad arguments.
"""

import argparse
import base64
import json
import mimetypes
import os
import socket
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

VIDEO_LOADERS = {"DVAVideoLoad": "video", "LoadVideo": "file", "VHS_LoadVideo": "video"}
OUTPUT_KEYS = ("videos", "gifs", "images", "audio", "files")
HTTP_TIMEOUT_S = 60
POLL_INTERVAL_S = 0.5
HISTORY_POLL_S = 5.0  # with a websocket, /history is still checked this often
WS_READ_TIMEOUT_S = 1.0
DONE_EVENTS = ("execution_success", "execution_error", "execution_interrupted")


class WorkflowError(RuntimeError):
    """The server rejected the workflow or failed while running it."""


# ---------------------------------------------------------------------------------------------- HTTP


def _request(server: str, path: str, *, data: Optional[bytes] = None, headers: Optional[dict] = None) -> bytes:
    request = urllib.request.Request(server.rstrip("/") + path, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        body = error.read().decode("utf-8", "replace")
        raise WorkflowError(f"{path} answered HTTP {error.code}: {_explain(body)}") from None
    except urllib.error.URLError as error:
        raise WorkflowError(f"cannot reach the ComfyUI server at {server} ({error.reason}); is it running?") from None


def _explain(body: str) -> str:
    """The readable part of a ComfyUI error answer (node_errors of an invalid prompt)."""
    try:
        answer = json.loads(body)
    except ValueError:
        return body[:500]
    parts = []
    if isinstance(answer.get("error"), dict):
        parts.append(answer["error"].get("message", ""))
    for node_id, node_error in (answer.get("node_errors") or {}).items():
        for error in node_error.get("errors", []):
            parts.append(f"node {node_id} ({node_error.get('class_type')}): {error.get('message')}: {error.get('details')}")
    return "; ".join(p for p in parts if p) or body[:500]


def get_json(server: str, path: str) -> Any:
    return json.loads(_request(server, path))


def post_json(server: str, path: str, payload: Any) -> Any:
    body = json.dumps(payload).encode()
    return json.loads(_request(server, path, data=body, headers={"Content-Type": "application/json"}) or b"{}")


def upload(server: str, path: Path, *, overwrite: bool = False) -> str:
    """Store ``path`` in the server's input folder (POST /upload/image); returns its name there.

    Without ``overwrite`` the server keeps an identical file that is already there (so its cached
    results stay valid) and renames a different file of the same name.
    """
    boundary = uuid.uuid4().hex
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    fields = [(b'name="overwrite"', b"true" if overwrite else b"false"), (b'name="type"', b"input")]
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Disposition: form-data; " + header + b"\r\n\r\n" + value + b"\r\n"
        for header, value in fields
    )
    body += (
        b"--" + boundary.encode() + b"\r\nContent-Disposition: form-data; name=\"image\"; filename=\""
        + path.name.encode() + b"\"\r\nContent-Type: " + mime.encode() + b"\r\n\r\n"
        + path.read_bytes() + b"\r\n--" + boundary.encode() + b"--\r\n"
    )
    answer = json.loads(_request(server, "/upload/image", data=body,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}))
    return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]


def submit(server: str, prompt: Dict[str, Any], client_id: str) -> str:
    """POST /prompt; returns the prompt id (a WorkflowError carries the server's node_errors)."""
    return post_json(server, "/prompt", {"prompt": prompt, "client_id": client_id})["prompt_id"]


def download(server: str, item: Dict[str, str], destination: Path) -> Path:
    """Fetch one output file ({filename, subfolder, type} from /history) via /view."""
    query = urllib.parse.urlencode({"filename": item["filename"], "subfolder": item.get("subfolder", ""),
                                    "type": item.get("type", "output")})
    destination.write_bytes(_request(server, f"/view?{query}"))
    return destination


# ----------------------------------------------------------------------------------------- websocket


class WebSocket:
    """Just enough of RFC 6455 to read ComfyUI's /ws status messages (text frames; binary skipped)."""

    def __init__(self, server: str, client_id: str):
        url = urllib.parse.urlparse(server)
        self.sock = socket.create_connection((url.hostname, url.port or 80), timeout=HTTP_TIMEOUT_S)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: {url.hostname}:{url.port or 80}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1024)
            if not chunk:
                raise ConnectionError("websocket handshake: connection closed")
            head += chunk
        head, self.buffer = head.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"websocket handshake refused: {head.splitlines()[0]!r}")
        self.sock.settimeout(WS_READ_TIMEOUT_S)

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("websocket closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)  # control frames < 126 B

    def receive(self) -> Optional[dict]:
        """The next JSON text message, or None after WS_READ_TIMEOUT_S without one."""
        try:
            first, second = self._read(2)
        except socket.timeout:
            return None
        self.sock.settimeout(HTTP_TIMEOUT_S)  # a frame has started: read it whole
        try:
            length = second & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if second & 0x80 else None
            payload = self._read(length)
        finally:
            self.sock.settimeout(WS_READ_TIMEOUT_S)
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        opcode = first & 0x0F
        if opcode == 0x8:
            raise ConnectionError("websocket closed by the server")
        if opcode == 0x9:
            self._send(0xA, payload)
        if opcode != 0x1:
            return None
        return json.loads(payload)

    def close(self) -> None:
        try:
            self._send(0x8, b"")
        except OSError:
            pass
        self.sock.close()


# --------------------------------------------------------------------------------------------- run


def wait(server: str, prompt_id: str, *, on_message: Callable[[str, dict], None], timeout_s: float,
         ws: Optional[WebSocket] = None) -> Dict[str, Any]:
    """Follow ``prompt_id`` until it finishes; returns its /history entry (status, outputs).

    ComfyUI adds a prompt to /history only once it has finished (successfully or not).
    """
    deadline = time.monotonic() + timeout_s
    next_poll = time.monotonic()
    while time.monotonic() < deadline:
        finished = False
        if ws is not None:
            try:
                message = ws.receive()
            except (OSError, ConnectionError, ValueError):
                ws = None  # fall back to polling
                message = None
            if message is not None:
                data = message.get("data") or {}
                if data.get("prompt_id", prompt_id) == prompt_id:
                    on_message(message.get("type", ""), data)
                    finished = message.get("type") in DONE_EVENTS
        else:
            time.sleep(POLL_INTERVAL_S)
        if finished or ws is None or time.monotonic() >= next_poll:
            next_poll = time.monotonic() + HISTORY_POLL_S
            history = get_json(server, f"/history/{prompt_id}").get(prompt_id)
            if history:
                return history
    raise WorkflowError(f"the workflow did not finish within {timeout_s:.0f} s (prompt {prompt_id}).")


def status_messages(history: Dict[str, Any]) -> Dict[str, dict]:
    """The status messages of a finished prompt by type (execution_cached, execution_error...)."""
    return {name: data for name, data in history.get("status", {}).get("messages", [])}


def cached_nodes(history: Dict[str, Any]) -> List[str]:
    """Ids of the nodes ComfyUI did not re-run because their inputs were unchanged."""
    return list(status_messages(history).get("execution_cached", {}).get("nodes", []))


def output_files(history: Dict[str, Any]) -> List[Dict[str, str]]:
    """Every file the output nodes saved ({filename, subfolder, type}); previews (type "temp") are left out."""
    files = []
    for node_output in history.get("outputs", {}).values():
        for key in OUTPUT_KEYS:
            files += [item for item in node_output.get(key, [])
                      if isinstance(item, dict) and "filename" in item and item.get("type", "output") == "output"]
    return files


def check_success(history: Dict[str, Any]) -> None:
    """Raise WorkflowError with the node's own message when the run failed."""
    messages = status_messages(history)
    if "execution_error" in messages:
        error = messages["execution_error"]
        raise WorkflowError(f"node {error.get('node_id')} ({error.get('node_type')}) failed: "
                            f"{error.get('exception_type')}: {error.get('exception_message', '').strip()}")
    if "execution_interrupted" in messages:
        raise WorkflowError("the run was cancelled.")
    if history.get("status", {}).get("status_str") != "success":
        raise WorkflowError(f"the run did not succeed: {history.get('status')}")


def run_prompt(server: str, prompt: Dict[str, Any], *, timeout_s: float = 3600,
               on_message: Callable[[str, dict], None] = lambda kind, data: None) -> Dict[str, Any]:
    """Submit ``prompt`` and wait for it (websocket progress when available); returns its history."""
    client_id = uuid.uuid4().hex
    try:
        ws = WebSocket(server, client_id)
    except (OSError, ConnectionError):
        ws = None
    try:
        prompt_id = submit(server, prompt, client_id)
        history = wait(server, prompt_id, on_message=on_message, timeout_s=timeout_s, ws=ws)
    finally:
        if ws is not None:
            ws.close()
    history["prompt_id"] = prompt_id
    return history


def set_inputs(prompt: Dict[str, Any], assignments: List[str]) -> None:
    """Apply ``NAME=VALUE`` / ``NODE.NAME=VALUE`` overrides in place (a ValueError when nothing matches)."""
    for assignment in assignments:
        target, sep, raw = assignment.partition("=")
        if not sep:
            raise ValueError(f"--set {assignment!r} is not NAME=VALUE or NODE.NAME=VALUE.")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        node_id, _, name = target.rpartition(".")
        hits = [n for i, n in prompt.items() if (not node_id or i == node_id) and name in n.get("inputs", {})
                and not isinstance(n["inputs"][name], list)]
        if not hits:
            raise ValueError(f"--set {assignment!r}: no node has a widget input named {name!r}.")
        for node in hits:
            node["inputs"][name] = value


def set_video(prompt: Dict[str, Any], name: str) -> None:
    """Point every video loader of the workflow at input file ``name``."""
    loaders = [n for n in prompt.values() if n.get("class_type") in VIDEO_LOADERS]
    if not loaders:
        raise ValueError(f"the workflow has no video loader ({', '.join(VIDEO_LOADERS)}).")
    for node in loaders:
        node["inputs"][VIDEO_LOADERS[node["class_type"]]] = name


def _print_progress(kind: str, data: dict) -> None:
    if kind == "execution_cached" and data.get("nodes"):
        print(f"cached (not re-run): {', '.join(data['nodes'])}", file=sys.stderr)
    elif kind == "executing" and data.get("node"):
        print(f"running node {data['node']}", file=sys.stderr)
    elif kind == "progress":
        print(f"  node {data.get('node')}: {data.get('value')}/{data.get('max')}", file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workflow", type=Path, help="API-format workflow JSON")
    parser.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI base URL")
    parser.add_argument("--video", type=Path, help="video to upload and feed to the workflow's video loader")
    parser.add_argument("--set", action="append", default=[], metavar="[NODE.]NAME=VALUE", help="override an input")
    parser.add_argument("--out", type=Path, help="where to save the result (a file, or a folder for several)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the run")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    try:
        prompt = json.loads(args.workflow.read_text())
        if args.video is not None:
            set_video(prompt, upload(args.server, args.video))
        set_inputs(prompt, args.set)
        history = run_prompt(args.server, prompt, timeout_s=args.timeout,
                             on_message=(lambda kind, data: None) if args.quiet else _print_progress)
        check_success(history)
    except (OSError, ValueError, WorkflowError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1 if isinstance(error, WorkflowError) else 2
    files = output_files(history)
    for item in files:
        if args.out is None:
            print(f"output: {item.get('subfolder', '')}/{item['filename']} ({item.get('type')})")
            continue
        target = args.out / item["filename"] if (len(files) > 1 or args.out.is_dir()) else args.out
        target.parent.mkdir(parents=True, exist_ok=True)
        print(f"saved {download(args.server, item, target)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
