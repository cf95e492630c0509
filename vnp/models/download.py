"""Downloading one model file over HTTP(S): resumed, retried with back-off, with progress.

`download_file(url, part)` writes into `part` (a temporary name the caller renames once the file is
verified). Bytes already in `part` are kept and the rest is asked for with a `Range` header, so an
interrupted download (this run's or an earlier one's) continues where it stopped. An attempt that
breaks off after receiving bytes, or a 429/5xx answer, is retried after 1, 2, 4 ... s (at most
`retries` times); a server that does not answer at all within `timeout_s` (unreachable, refused,
or a blackhole that accepts and stays silent) is reported at once, in one line.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from vnp.support.errors import InputError
from vnp.models.sources import network

log = logging.getLogger("vnp")

DOWNLOAD_BLOCK = 1 << 20
RETRY_STATUS = (429, 500, 502, 503, 504)


class _Interrupted(Exception):
    """An attempt that may succeed when tried again (bytes arrived, or the server said 'later')."""


def get_json(url: str, timeout_s: float):
    """A small JSON document (the hub's revision API); InputError names the URL and the problem."""
    _refuse_offline(url)
    try:
        with urllib.request.urlopen(_request(url), timeout=timeout_s) as response:
            return json.loads(response.read(1 << 24))
    except urllib.error.HTTPError as err:
        raise InputError(f"{url}: the server answered HTTP {err.code} {err.reason}") from None
    except ValueError as err:
        raise InputError(f"{url}: not a JSON answer ({err})") from None
    except (OSError, http.client.HTTPException) as err:
        raise InputError(f"{url}: {_no_answer(err, timeout_s)}") from None


def content_length(url: str, timeout_s: float) -> int:
    """The size a server gives for `url` (HEAD), 0 when it gives none."""
    _refuse_offline(url)
    try:
        with urllib.request.urlopen(_request(url, method="HEAD"), timeout=timeout_s) as response:
            return int(response.headers.get("Content-Length") or 0)
    except urllib.error.HTTPError as err:
        raise InputError(f"{url}: the server answered HTTP {err.code} {err.reason}") from None
    except (OSError, http.client.HTTPException) as err:
        raise InputError(f"{url}: {_no_answer(err, timeout_s)}") from None


def download_file(url: str, part: Path, timeout_s: float, retries: int = 4, backoff_s: float = 1.0,
                  label: str | None = None, progress: bool = True) -> int:
    """Complete `part` from `url`; returns its size. InputError when it cannot be completed."""
    _refuse_offline(url)
    label = label or part.name.removesuffix(".part")
    for attempt in range(retries + 1):
        try:
            return _attempt(url, part, timeout_s, label, progress)
        except _Interrupted as err:
            if attempt == retries:
                raise InputError(f"{url}: download failed after {retries + 1} tries ({err}); run the same "
                                 "command again to continue it") from None
            wait = backoff_s * 2 ** attempt
            log.warning("%s: %s; trying again in %.0f s", label, err, wait)
            print(f"vnp: {label}: {err}; trying again in {wait:.0f} s", file=sys.stderr)
            time.sleep(wait)
    raise AssertionError("unreachable")


def _attempt(url: str, part: Path, timeout_s: float, label: str, progress: bool) -> int:
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = urllib.request.urlopen(_request(url, headers), timeout=timeout_s)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the part is not a prefix of this file: start afresh
            part.unlink()
            raise _Interrupted("the partial file did not match the server's; starting again") from None
        if err.code in RETRY_STATUS:
            raise _Interrupted(f"HTTP {err.code} {err.reason}") from None
        raise InputError(f"{url}: the server answered HTTP {err.code} {err.reason}") from None
    except (OSError, http.client.HTTPException) as err:  # no answer at all: say so at once
        raise InputError(f"{url}: {_no_answer(err, timeout_s)}") from None
    with response:
        if response.status != 206:
            have = 0  # the server sends the whole file
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        return _receive(response, part, have, total, label, progress)


def _receive(response, part: Path, have: int, total: int | None, label: str, progress: bool) -> int:
    started, received = time.monotonic(), 0
    bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
               file=sys.stderr, mininterval=1.0, disable=not progress, leave=False)
    log.info("%s: downloading %s bytes%s", label, total if total is not None else "?",
             f", resuming at {have}" if have else "")
    try:
        with open(part, "ab" if have else "wb") as fh:
            while block := response.read(DOWNLOAD_BLOCK):
                fh.write(block)
                received += len(block)
                bar.update(len(block))
    except (OSError, http.client.HTTPException) as err:
        raise _Interrupted(f"interrupted after {have + received} bytes ({_reason(err)})") from None
    finally:
        bar.close()
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Interrupted(f"the connection closed after {size} of {total} bytes")
    took = max(time.monotonic() - started, 1e-6)
    log.info("%s: %d bytes in %.1f s (%.1f MB/s)", label, size, took, received / took / 1e6)
    return size


def _request(url: str, headers: dict | None = None, method: str = "GET") -> urllib.request.Request:
    from vnp import __version__

    return urllib.request.Request(url, headers={"User-Agent": f"vnp/{__version__}", **(headers or {})},
                                  method=method)


def _refuse_offline(url: str) -> None:
    if network().offline:
        raise InputError(f"{url}: not downloaded: offline mode (offline=true or HF_HUB_OFFLINE=1)")


def _reason(err: BaseException) -> str:
    reason = getattr(err, "reason", None) or err
    return str(reason).strip() or type(reason).__name__


def _no_answer(err: BaseException, timeout_s: float) -> str:
    reason = getattr(err, "reason", err)
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout_s:g} s (models.timeout_s); is the network or mirror reachable?"
    return f"cannot be reached ({_reason(err)})"
