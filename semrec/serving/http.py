"""``semrec serve``: an HTTP JSON service over a ``semrec export`` directory (FastAPI).

``POST /recommend`` answers ``{"user": ID}`` from a top-K cache (the file ``semrec predict``
writes) and ``{"history": [item ids]}`` by live decoding with the exported recommender;
``GET /health`` says what is loaded. Request bodies over ``max_request_bytes`` (2 MB by
default) are answered 413 before they are parsed; error replies never echo the request
back. Live requests are decoded together: a micro-batcher
collects them for up to ``max_wait_ms`` (or until ``max_batch`` are waiting), groups them by
``(k, exclude_history)`` and runs one batched beam search per group in a single worker
thread (the model is not thread-safe). Each request is checked against the catalogue
before it joins a batch, so a bad request fails alone.

Needs the ``serve`` extra: ``pip install 'semrec[serve]'``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

try:
    import uvicorn
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
except ImportError as err:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"semrec serve needs FastAPI and uvicorn ({err}): pip install 'semrec[serve]'"
    ) from err
from pydantic import BaseModel, BeforeValidator, ConfigDict, StrictBool, StrictInt, model_validator

from semrec.serving.topk_cache import TopKCache

if TYPE_CHECKING:
    from semrec.serving.recommender import Recommendation, Recommender


def _as_id(value: object) -> object:
    """User and item ids may come as JSON numbers (ml-100k's are digits); semrec's are
    strings."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


ExternalId = Annotated[str, BeforeValidator(_as_id)]


class RecommendRequest(BaseModel):
    """The body of ``POST /recommend``: a cached ``user``, a ``history``, or both."""

    model_config = ConfigDict(extra="forbid")

    user: ExternalId | None = None
    history: list[ExternalId] | None = None
    k: StrictInt | None = None  # strict: true is not 1, "5" is not 5
    exclude_history: StrictBool = True

    @model_validator(mode="after")
    def _user_or_history(self) -> RecommendRequest:
        if self.user is None and self.history is None:
            raise ValueError('give a "user" (served from the top-K cache) or a "history"')
        return self


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendResponse(BaseModel):
    """Best first; ``source`` says whether the top-K cache or live decoding answered. ``k``
    is the number of items returned; ``requested_k`` what was asked, and ``note`` says why
    fewer came back."""

    items: list[ScoredItem]
    source: Literal["cache", "live"]
    k: int
    requested_k: int
    note: str | None = None


def _response(items: list[ScoredItem], source: str, requested: int, excluded: bool):
    note = None
    if len(items) < requested:
        why = "after the history's items were excluded" if excluded else "in the beam search"
        note = f"only {len(items)} valid items were found {why}"
    return RecommendResponse(
        items=items, source=source, k=len(items), requested_k=requested, note=note
    )


DEFAULT_MAX_REQUEST_BYTES = 2_000_000


class BodySizeLimit:
    """ASGI middleware: a request whose body is over ``max_bytes`` gets a 413, by its
    Content-Length before anything is read; a body without one (chunked) is read here up to
    the limit, then handed on whole."""

    def __init__(self, app, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_request_bytes must be >= 1, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                await self._reject(send)
            else:
                await self.app(scope, receive, send)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._reject(send)
                return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _reject(self, send) -> None:
        response = JSONResponse(
            status_code=413,
            content={"detail": f"request body over the server's limit of {self.max_bytes} bytes"},
        )
        await response({"type": "http"}, _no_body, send)


async def _no_body() -> dict:
    return {"type": "http.request", "body": b"", "more_body": False}


@dataclass
class _Pending:
    history: list[str]
    k: int
    exclude_history: bool
    future: asyncio.Future = field(repr=False)


class ServeStartError(RuntimeError):
    """The service could not start (a bad export, cache or setting); one line says why."""


class ServerUnavailable(RuntimeError):
    """Live decoding is not running (not started, stopped, or its task died): a 503."""


class DecodingFailed(RuntimeError):
    """The model failed on a batch of valid requests: a 500."""


class MicroBatcher:
    """Decodes live requests in batches: whatever arrives within ``max_wait_ms`` of the first
    waiting request (at most ``max_batch``) is grouped by ``(k, exclude_history)`` and each
    group goes through one :meth:`~semrec.serving.recommender.Recommender.recommend_batch`
    in one worker thread, one batch at a time. ``batches`` and ``decoded`` count the batch
    searches run and the requests they answered."""

    def __init__(self, recommender: Recommender, *, max_batch: int, max_wait_ms: float) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.recommender = recommender
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.batches = 0
        self.decoded = 0
        self._pending: list[_Pending] = []
        self._in_flight: list[_Pending] = []  # the batch being decoded
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def submit(
        self, history: list[str], k: int, exclude_history: bool
    ) -> list[Recommendation]:
        """The recommendations for one (already validated) history, once its batch ran."""
        if self._worker is None or self._arrived is None or self._worker.done():
            raise ServerUnavailable("live decoding is not running (the app's lifespan starts it)")
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(history, k, exclude_history, future))
        self._arrived.set()
        return await future

    def start(self) -> None:
        """Start the batching task on the running event loop."""
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="semrec-decode")
        self._worker = asyncio.get_running_loop().create_task(self._run())
        self._worker.add_done_callback(self._ended)

    def _ended(self, worker: asyncio.Task) -> None:
        """Fail every waiting request when the batching task ends (stopped or crashed)."""
        reason = "the server is shutting down"
        if not worker.cancelled() and worker.exception() is not None:
            reason = f"live decoding stopped: {worker.exception()!r}"
        _fail([*self._in_flight, *self._pending], ServerUnavailable(reason))
        self._pending.clear()

    async def stop(self) -> None:
        """Stop batching; requests still waiting fail with a RuntimeError (a 503)."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        _fail([*self._in_flight, *self._pending], ServerUnavailable("the server is shutting down"))
        self._pending.clear()
        if self._executor is not None:  # a decode still running finishes in its thread
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._worker = self._executor = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            deadline = loop.time() + self.max_wait
            while len(self._pending) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._in_flight = self._pending[: self.max_batch]
            self._pending = self._pending[self.max_batch :]
            if not self._pending:
                self._arrived.clear()
            groups: dict[tuple[int, bool], list[_Pending]] = {}
            for pending in batch:
                if pending.future.done():  # its client went away while it waited
                    continue
                groups.setdefault((pending.k, pending.exclude_history), []).append(pending)
            for (k, exclude_history), group in groups.items():
                await self._decode(loop, group, k, exclude_history)
            self._in_flight = []

    async def _decode(self, loop, group: list[_Pending], k: int, exclude_history: bool) -> None:
        search = partial(
            self.recommender.recommend_batch,
            [pending.history for pending in group],
            k,
            exclude_history=exclude_history,
        )
        try:
            results = await loop.run_in_executor(self._executor, search)
        except asyncio.CancelledError:  # stop() while this group decodes
            _fail(group, ServerUnavailable("the server is shutting down"))
            raise
        except Exception as err:  # every request of the group was valid: a server error
            _fail(group, DecodingFailed(f"decoding failed: {type(err).__name__}: {err}"))
            return
        finally:
            self.batches += 1
        self.decoded += len(group)
        for pending, result in zip(group, results):
            if not pending.future.done():  # its client may have gone meanwhile
                pending.future.set_result(result)


def _fail(requests: Sequence[_Pending], error: Exception) -> None:
    for pending in requests:
        if not pending.future.done():
            pending.future.set_exception(error)


def _without_inputs(errors: Sequence[dict]) -> list[dict]:
    """Validation errors without the offending input (never echo a request back)."""
    kept = []
    for error in errors:
        error = {k: v for k, v in error.items() if k not in ("input", "url")}
        if "ctx" in error:
            error["ctx"] = {k: str(v)[:200] for k, v in error["ctx"].items()}
        kept.append(error)
    return kept


def _readable(errors: Sequence[dict]) -> str:
    """FastAPI's validation errors as one sentence, e.g. ``body.k: Input should be ...``."""
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()))
        message = error.get("msg", "invalid")
        if error.get("type") == "json_invalid":
            message = f"the body is not valid JSON ({error.get('ctx', {}).get('error', '')})"
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def create_app(
    recommender: Recommender,
    cache: TopKCache | None = None,
    *,
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> FastAPI:
    """The FastAPI app serving ``recommender`` (live decoding) and ``cache`` (known users).

    ``app.state.batcher`` is the :class:`MicroBatcher` (its ``batches`` count the batched
    searches run). The cache is checked against the recommender's catalogue first.
    """
    if cache is not None:
        cache.check_catalogue(frozenset(recommender.item_ids))
    batcher = MicroBatcher(recommender, max_batch=max_batch, max_wait_ms=max_wait_ms)
    cache_k = cache.k if cache is not None else 0

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(
        title="semrec",
        summary="Top-K recommendations from a semrec export",
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit, max_bytes=max_request_bytes)
    app.state.batcher = batcher
    app.state.recommender = recommender
    app.state.cache = cache

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _without_inputs(jsonable_encoder(exc.errors()))
        return JSONResponse(
            status_code=422,
            content={"detail": f"invalid request: {_readable(errors)}", "errors": errors},
        )

    @app.get("/health")
    async def health() -> dict:
        """What is loaded, and how many live batches ran."""
        return {
            "status": "ok",
            "items": recommender.num_items,
            "cached_users": len(cache) if cache is not None else 0,
            "cache_k": cache_k,
            "default_k": recommender.default_k,
            "model": recommender.info.get("run", {}).get("name"),
            "live_batches": batcher.batches,
            "live_requests": batcher.decoded,
        }

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(request: RecommendRequest) -> RecommendResponse:
        """A cached user's top K, else the live top K after the given history."""
        k = recommender.default_k if request.k is None else request.k
        if not 1 <= k <= recommender.num_items:
            raise HTTPException(
                422, f"k must be between 1 and the {recommender.num_items} catalogue items, got {k}"
            )
        if request.user is not None and cache is not None and request.user in cache:
            try:
                pairs = cache.recommend(request.user, k)
            except ValueError as err:  # the cache holds fewer than k items for this user
                if request.history is None:
                    raise HTTPException(422, f"{err}, or send the user's history") from None
            else:
                items = [ScoredItem(item_id=item, score=score) for item, score in pairs]
                return _response(items, "cache", k, request.exclude_history)
        if request.history is None:
            where = (
                f"not in the top-K cache ({len(cache)} users)"
                if cache is not None
                else "not servable: no top-K cache is loaded (semrec serve --cache)"
            )
            raise HTTPException(
                404, f"user {request.user[:80]!r} is {where}; send a history instead"
            )
        try:  # before batching: a bad history fails alone, not its batch-mates
            recommender.check_history(request.history)
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        try:
            found = await batcher.submit(request.history, k, request.exclude_history)
        except ServerUnavailable as err:
            raise HTTPException(503, str(err)) from None
        except DecodingFailed as err:
            raise HTTPException(500, str(err)) from None
        items = [ScoredItem(item_id=r.item_id, score=r.score) for r in found]
        return _response(items, "live", k, request.exclude_history)

    return app


@contextmanager
def running_in_background(app: FastAPI, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``app`` with uvicorn on an ephemeral port of ``host`` in a background thread
    (tests, benchmarks, notebooks); yields its base URL and stops the server on exit."""
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="semrec-serve", daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the server stopped while starting (see its log above)")
            thread.join(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def serve(
    directory: str | Path,
    cache_path: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> None:
    """Load the export in ``directory`` (and the top-K file ``cache_path``) and serve it with
    uvicorn on ``host:port`` until interrupted. Whatever fails while starting is raised as
    one :class:`ServeStartError` naming the file or setting."""
    from semrec.serving.recommender import load_recommender

    if not 0 <= port <= 65535:
        raise ServeStartError(f"--port must be between 0 and 65535, got {port}")
    try:
        recommender = load_recommender(directory)
    except Exception as err:  # a truncated weight file raises the loader's own errors
        raise ServeStartError(
            f"could not load the export {directory}: {type(err).__name__}: {err}"
        ) from err
    try:
        cache = TopKCache(cache_path) if cache_path is not None else None
        app = create_app(
            recommender,
            cache,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_request_bytes=max_request_bytes,
        )
    except (OSError, ValueError) as err:
        raise ServeStartError(str(err)) from err
    print(
        f"[serve] {recommender.num_items} items"
        + (f", {len(cache)} cached users (k={cache.k})" if cache is not None else "")
        + f": POST http://{host}:{port}/recommend, GET /health"
    )
    uvicorn.run(app, host=host, port=port, log_level="info")
