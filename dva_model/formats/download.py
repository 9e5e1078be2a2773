"""Fetching one public Google Drive file: confirmation page, resume, size check, SHA-256, atomic rename.

Google Drive serves a small file directly (``Content-Disposition: attachment``). For a large file it
first answers with a "virus scan warning" page whose download form carries ``confirm`` / ``uuid``
parameters; ``gdown`` (a maintained Drive client) interprets that page, so no Drive page parsing or
cookie handling lives here. The transfer itself uses ``requests`` directly because gdown hard-codes
``https://drive.google.com``, and the tests point the endpoint at a stand-in server on 127.0.0.1
(``DRIVE_URL_ENV``).

Bytes go to ``.<name>.part`` beside the target. An interrupted run leaves that partial file, and the
next run continues it with an HTTP ``Range`` request; the file is renamed to its final name only when
its size is the one announced (and the one expected, where known). Nothing ever sits half-written
under the final name. ``requests`` and ``gdown`` are imported only when a download is asked for.
"""

import hashlib
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Tuple

from dva_model.errors import UserError
from dva_model.progress import ProgressCallback, report

log = logging.getLogger(__name__)

DRIVE_URL = "https://drive.google.com"
DRIVE_URL_ENV = "DVA_DRIVE_URL"  # e.g. http://127.0.0.1:8123 for a stand-in server in tests
CHUNK_BYTES = 1 << 20
TIMEOUT_S = (20, 120)  # (connect, between bytes)
MAX_PAGES = 3  # confirmation pages followed before giving up
FREE_SPACE_MARGIN = 64 << 20  # keep this much free beyond the file itself
PART_SUFFIX = ".part"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadError(UserError):
    """A download failed; the message says what happened and what to do (one sentence)."""


@dataclass(frozen=True)
class Downloaded:
    """A completed download: where it is, its size in bytes and its SHA-256 (hex)."""

    path: Path
    size: int
    sha256: str


def drive_url(file_id: str) -> str:
    """The public download URL of Drive file ``file_id`` (the endpoint follows ``DRIVE_URL_ENV``)."""
    base = os.environ.get(DRIVE_URL_ENV, DRIVE_URL).rstrip("/")
    return f"{base}/uc?export=download&id={file_id}"


def partial_path(target: Path) -> Path:
    """Where the bytes of ``target`` collect until it is complete (hidden, beside it)."""
    return target.with_name(f".{target.name}{PART_SUFFIX}")


def download_drive_file(
    file_id: str,
    target: Path,
    *,
    expected_size: Optional[int] = None,
    retries: int = 2,
    callback: Optional[ProgressCallback] = None,
    verify: Optional[Callable[[Path], None]] = None,
) -> Downloaded:
    """Download Drive file ``file_id`` to ``target``, resuming a partial file left by an earlier run.

    expected_size: the released file's size in bytes, when known; the server's announced size must
    equal it. retries: how many times an interrupted transfer is resumed within this call.
    callback(done_bytes, total_bytes) follows the transfer and may raise to cancel (the partial file
    stays for the next run). verify(partial_path) may raise UserError when the complete file is not
    what was expected (it is then deleted). Raises DownloadError with one sentence on any failure.
    """
    import requests

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with requests.Session() as session:
        for attempt in range(retries + 1):
            try:
                _transfer(session, file_id, target, expected_size, callback)
                break
            except _Interrupted as interrupted:
                if attempt == retries:
                    raise DownloadError(f"{interrupted}; run the command again to resume from there.") from None
                log.warning("%s; resuming (%d of %d).", interrupted, attempt + 1, retries)
    partial = partial_path(target)
    if verify is not None:
        try:
            verify(partial)
        except UserError as error:
            partial.unlink()
            raise DownloadError(f"The downloaded {target.name} is not the released file ({error}); it was "
                                "deleted and nothing was saved.") from None
    digest = file_sha256(partial)
    size = partial.stat().st_size
    os.replace(partial, target)
    return Downloaded(path=target, size=size, sha256=digest)


class _Interrupted(Exception):
    """The transfer stopped early; the partial file is kept and can be resumed."""


def _transfer(session, file_id: str, target: Path, expected_size: Optional[int],
              callback: Optional[ProgressCallback]) -> None:
    """One request-and-stream pass into the partial file (resumed from its current size)."""
    import requests

    partial = partial_path(target)
    offset = partial.stat().st_size if partial.is_file() else 0
    if expected_size is not None and offset > expected_size:
        partial.unlink()
        offset = 0
    url = drive_url(file_id)
    try:
        response = _open_file_response(session, url, offset, target)
    except requests.ConnectionError as error:
        raise DownloadError(f"Cannot reach {url.split('/uc?')[0]} to download {target.name} ({_reason(error)}); "
                            "check the network connection and run the command again.") from None
    except requests.Timeout:
        raise DownloadError(f"{url.split('/uc?')[0]} did not answer in time for {target.name}; "
                            "run the command again later.") from None
    with response:
        if response.status_code == 416 and _announced_total(response) == offset:
            return  # an earlier run got every byte but stopped before the rename
        offset, total = _checked_range(response, offset, partial, target, expected_size)
        if total is not None:
            _check_free_space(target, total - offset)
        _stream(response, partial, offset, total, target, callback)


def _open_file_response(session, url: str, offset: int, target: Path):
    """The streaming response carrying the file's bytes from ``offset`` (following Drive's warning page)."""
    from gdown.download import get_url_from_gdrive_confirmation
    from gdown.exceptions import FileURLRetrievalError

    headers = {"Range": f"bytes={offset}-"} if offset else {}
    response = session.get(url, stream=True, timeout=TIMEOUT_S, headers=headers)
    for _ in range(MAX_PAGES):
        if not response.headers.get("Content-Type", "").startswith("text/html"):
            return response
        page = response.text
        response.close()
        try:
            url = get_url_from_gdrive_confirmation(page)
        except FileURLRetrievalError as error:
            reason = " ".join(str(error).split()).split(". ")[0].rstrip(".")  # Drive's own reason, or gdown's
            raise DownloadError(f"Google Drive refused {target.name} ({reason}); try again later "
                                "(a shared file has a daily download quota).") from None
        response = session.get(url, stream=True, timeout=TIMEOUT_S, headers=headers)
    response.close()
    raise DownloadError(f"Google Drive kept answering {target.name} with a web page instead of the file; "
                        "try again later.")


def _checked_range(response, offset: int, partial: Path, target: Path,
                   expected_size: Optional[int]) -> Tuple[int, Optional[int]]:
    """(offset the body starts at, total file size or None) after checking status and announced size."""
    status = response.status_code
    if status == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
        if match is None or int(match[1]) != offset:
            partial.unlink(missing_ok=True)
            raise _Interrupted(f"The server resumed {target.name} at the wrong place; the partial file "
                               "was discarded and the download starts over")
        total = None if match[3] == "*" else int(match[3])
    elif status == 200:
        if offset:
            log.warning("The server ignored the resume request for %s; downloading it from the start.", target.name)
            partial.unlink(missing_ok=True)
            offset = 0
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
    elif status == 416 and offset:  # the partial file is already as long as (or longer than) the file
        partial.unlink(missing_ok=True)
        raise _Interrupted(f"The partial file of {target.name} did not fit the file on the server; "
                           "it was discarded and the download starts over")
    else:
        raise DownloadError(f"Google Drive answered HTTP {status} ({response.reason}) for {target.name} "
                            f"({response.url}); try again later.")
    if expected_size is not None and total is not None and total != expected_size:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"The server offers {target.name} with {total:,} bytes, but the released file has "
                            f"{expected_size:,}; it is not the released file, so nothing was saved.")
    return offset, total


def _announced_total(response) -> Optional[int]:
    """The file size a 416 answer announces ("Content-Range: bytes */SIZE"), if any."""
    match = re.fullmatch(r"bytes \*/(\d+)", response.headers.get("Content-Range", ""))
    return int(match[1]) if match else None


def _stream(response, partial: Path, offset: int, total: Optional[int], target: Path,
            callback: Optional[ProgressCallback]) -> None:
    """Append the body to ``partial``; raise _Interrupted if it ends early (the bytes so far are kept)."""
    import requests

    done = offset
    report(callback, done, total or 0)
    try:
        with open(partial, "ab" if offset else "wb") as sink:
            try:
                for chunk in response.iter_content(CHUNK_BYTES):
                    _write(sink, chunk)
                    done += len(chunk)
                    report(callback, done, total or done)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError, requests.Timeout) as error:
                raise _Interrupted(f"The download of {target.name} was interrupted after {_bytes(done)} of "
                                   f"{_bytes(total)} ({_reason(error)})") from error
    except OSError as error:
        raise DownloadError(f"Cannot write {partial} ({error.strerror or error}); free some disk space and run "
                            "the command again (it resumes from the bytes already saved).") from None
    if total is not None and done < total:
        raise _Interrupted(f"The download of {target.name} was interrupted after {_bytes(done)} of "
                           f"{_bytes(total)} (the server closed the connection)")
    if total is not None and done > total:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"The server sent {done:,} bytes for {target.name} but announced {total:,}; "
                            "nothing was saved, run the command again.")


def _write(sink, chunk: bytes) -> None:
    """One write of downloaded bytes (a seam where tests simulate a full disk)."""
    sink.write(chunk)


def _check_free_space(target: Path, needed: int) -> None:
    free = shutil.disk_usage(target.parent).free
    if free < needed + FREE_SPACE_MARGIN:
        raise DownloadError(f"Not enough free disk space for {target.name} in {target.parent}: it needs "
                            f"{_bytes(needed)} more and {_bytes(free)} are free; free some space and run the "
                            "command again.")


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _bytes(count: Optional[int]) -> str:
    if count is None:
        return "an unknown number of bytes"
    return f"{count / 2**20:,.1f} MB" if count >= 2**20 else f"{count:,} bytes"


def _reason(error: Exception) -> str:
    """The innermost reason of a requests/urllib3 error, short (e.g. 'Connection refused')."""
    import requests

    text = str(error)
    match = re.search(r"\[Errno -?\d+\] ([^')\"]+)", text)
    if match:
        return match[1].strip()
    if isinstance(error, requests.Timeout):
        return "no data within the time limit"
    if "Connection broken" in text or "IncompleteRead" in text:
        return "the connection broke off"
    return type(error).__name__
