"""The server's limits and access control: settings, the bearer token, request size, time and concurrency.

* Upload size: a request body larger than ``max_upload_bytes`` is refused with 413, by its
  Content-Length before anything is read, or while it streams in when it declares none.
* Time: the work of a request (embedding, searching, rendering) must finish within
  ``request_timeout_s`` of the handler starting, or the answer is 504.
* Concurrency: at most ``max_concurrent`` requests do such work at once; the others wait for a
  slot within their time budget, or get 503. A request that timed out keeps its slot until its
  work really ends (a thread cannot be stopped), so the limit holds for the work, not just the
  answers.
* Token: when one is set, every API route but ``/api/health`` needs ``Authorization: Bearer
  <token>``. It is read from an environment variable or a file, never from a command-line
  value, which would end up in shell history and in ``ps`` output for every user to read.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, SecretStr

from m3bind.errors import ConfigError

TOKEN_ENV_VAR = "M3BIND_SERVE_TOKEN"


class ServeSettings(BaseModel):
    """Limits of the search server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_upload_bytes: PositiveInt = Field(256 * 2**20, description="Largest request body (an uploaded study).")
    max_unpacked_bytes: PositiveInt = Field(2**30, description="Largest total size of an uploaded zip's files.")
    request_timeout_s: PositiveFloat = Field(60.0, description="Longest time a request may work.")
    max_k: PositiveInt = Field(100, description="Most results one search may ask for.")
    max_concurrent: PositiveInt = Field(4, description="Requests doing work at the same time.")
    token: SecretStr | None = Field(None, description="Bearer token every API call must carry; None: open.")
    upload_dir: Path | None = Field(None, description="Where uploads are unpacked (deleted after each "
                                                      "request); None: the system's temporary folder.")


def read_token(token_file: Path | None = None, env_var: str = TOKEN_ENV_VAR) -> SecretStr | None:
    """The token from ``token_file`` (first line) when given, else from ``env_var``; None when neither."""
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ConfigError(f"{token_file}: cannot read the token file: {error}") from error
        if not token:
            raise ConfigError(f"{token_file}: the token file is empty")
        return SecretStr(token)
    token = os.environ.get(env_var, "").strip()
    return SecretStr(token) if token else None


def check_bearer(authorization: str | None, token: SecretStr | None) -> None:
    """Raise 401 unless ``authorization`` is ``Bearer <token>`` (or no token is set)."""
    if token is None:
        return
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.get_secret_value().encode()):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


class WorkLimiter:
    """Runs blocking work in threads: at most ``max_concurrent`` at once, each within ``timeout_s``."""

    def __init__(self, max_concurrent: int, timeout_s: float):
        self.timeout_s = timeout_s
        self._slots = asyncio.Semaphore(max_concurrent)
        self._pool = ThreadPoolExecutor(max_concurrent, thread_name_prefix="m3bind-search")

    def deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.timeout_s

    async def run(self, work: Callable[[], Any], deadline: float) -> Any:
        loop = asyncio.get_running_loop()
        try:
            if self._slots.locked():
                await asyncio.wait_for(self._slots.acquire(), max(0.0, deadline - loop.time()))
            else:
                await self._slots.acquire()  # a free slot is taken at once, however little time is left
        except asyncio.TimeoutError:
            raise HTTPException(503, "the server is busy; try again shortly", headers={"Retry-After": "1"}) from None
        future = self._pool.submit(work)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._slots.release))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise HTTPException(504, f"the request took longer than {self.timeout_s:g} s") from None

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class RequestTooLarge(HTTPException):
    def __init__(self, max_bytes: int):
        super().__init__(413, f"the request is larger than the limit of {max_bytes} bytes")


class BodySizeLimit:
    """ASGI middleware: 413 for a request body over ``max_bytes`` (declared or streamed)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException, so FastAPI's body parsing passes it on as it is.
                    raise RequestTooLarge(self.max_bytes)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except RequestTooLarge:
            if started:
                raise
            await self._refuse(send)

    async def _refuse(self, send) -> None:
        body = json.dumps({"detail": str(RequestTooLarge(self.max_bytes).detail)}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
