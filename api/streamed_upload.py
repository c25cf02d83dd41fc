"""A multipart file upload read by a worker thread while it is still arriving.

Starlette's ``request.form()`` stores the whole file (on disk past 1 MB) before the route runs,
so a 200 MB recipient list would be received, then parsed. Here the body is parsed as it streams
in (python-multipart's push parser, on the event loop) and the bytes of the ``file`` part go
through a :class:`FilePipe` — a small bounded queue — to the import running in a worker thread,
which reads it like a file. Receiving, parsing and storing overlap, nothing waits in memory beyond
a few chunks, and a slow database slows the client down instead of filling memory (back-pressure
through the bounded queue).

If the body fails (too large, client gone, malformed), the reader gets an :class:`UploadAborted`
error at its next read; if the reader stops early (the file was refused), the rest of the body is
read and dropped, so the client gets the answer instead of a reset connection.
"""

from __future__ import annotations

import asyncio
import io
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from loa.errors import Invalid

__all__ = ["FilePipe", "UploadAborted", "stream_file_part"]

T = TypeVar("T")
_END = b""  # end of the file part (data chunks are never empty)


class UploadAborted(Exception):
    """The body of the upload stopped before the file was complete."""


class FilePipe(io.RawIOBase):
    """The bytes of one uploaded file, from the task receiving the body to a thread reading it."""

    def __init__(self, depth: int = 32) -> None:
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(depth)
        self._view = memoryview(b"")
        self._ended = False
        self.abandoned = threading.Event()  # the reader will not read any more

    # --- writer side (blocking: called through the thread pool) -------------------------------
    def put(self, item: bytes | BaseException) -> None:
        while not self.abandoned.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    # --- reader side ------------------------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._view:
            if self._ended:
                return 0
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._ended = True
                raise UploadAborted(str(item)) from item
            if item is _END or not item:
                self._ended = True
                return 0
            self._view = memoryview(item)
        target = memoryview(buffer).cast("B")
        size = min(len(target), len(self._view))
        target[:size] = self._view[:size]
        self._view = self._view[size:]
        return size

    def close(self) -> None:
        self.abandoned.set()
        super().close()


class _Parts:
    """python-multipart callbacks: find the ``file`` part, collect its bytes per received chunk."""

    def __init__(self, start: Callable[[str | None, str | None], None]) -> None:
        self._start = start
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self.in_file = False
        self.seen_file = False
        self.data: list[bytes] = []
        self.ended = False

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._grow("_header_name", d[s:e]),
            "on_header_value": lambda d, s, e: self._grow("_header_value", d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _grow(self, name: str, data: bytes) -> None:
        setattr(self, name, getattr(self, name) + data)

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if options.get(b"name") != b"file":
            return  # other form fields are ignored
        if b"filename" not in options:
            raise Invalid("the 'file' part must be a file (multipart with a filename)", {"field": "file"})
        if self.seen_file:
            raise Invalid("one file per upload", {"field": "file"})
        self.seen_file = self.in_file = True
        content_type = self._headers.get(b"content-type")
        self._start(
            options[b"filename"].decode("utf-8", "replace"),
            content_type.decode("latin-1") if content_type else None,
        )

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file and end > start:
            self.data.append(bytes(data[start:end]))

    def _part_end(self) -> None:
        if self.in_file:
            self.in_file = False
            self.ended = True


async def stream_file_part(request: Request, consume: Callable[[FilePipe, str | None, str | None], T]) -> T:
    """Run ``consume(pipe, filename, content_type)`` in a worker thread on the ``file`` part of
    the multipart body while the body arrives; returns what it returns."""
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise Invalid("multipart body without a boundary", {"field": "file"}, code="bad_multipart")
    pipe = FilePipe()
    task: asyncio.Future[T] | None = None

    def start(filename: str | None, content_type: str | None) -> None:
        nonlocal task

        def run() -> T:
            try:
                return consume(pipe, filename, content_type)
            finally:
                pipe.close()  # whatever happened, nothing more will be read

        task = asyncio.ensure_future(run_in_threadpool(run))

    parts = _Parts(start)
    parser = MultipartParser(boundary, parts.callbacks())  # type: ignore[arg-type]
    ended = False
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if parts.data:
                data, parts.data = b"".join(parts.data), []
                if not pipe.abandoned.is_set():
                    await run_in_threadpool(pipe.put, data)
            if parts.ended and not ended:
                ended = True
                await run_in_threadpool(pipe.put, _END)
        parser.finalize()
    except BaseException as exc:
        await _abort(pipe, task, exc)
        if isinstance(exc, ValueError) and not isinstance(exc, Invalid):  # python-multipart's parse errors
            raise Invalid(f"malformed multipart body: {exc}", {"field": "file"}, code="bad_multipart") from None
        raise
    if task is None:
        raise Invalid("multipart upload needs a 'file' part", {"field": "file"})
    if not ended:
        await run_in_threadpool(pipe.put, _END)  # a body that ended without the closing boundary
    return await task


async def _abort(pipe: FilePipe, task: Awaitable[Any] | None, exc: BaseException) -> None:
    """Tell the reader the body failed, and wait until it has stopped."""
    if task is None:
        return
    await run_in_threadpool(pipe.put, exc)
    await asyncio.gather(task, return_exceptions=True)
