"""Serve an ONNX model over HTTP (Open Inference Protocol v2 and a plain route), to audit or test endpoints.

``make_app`` builds a FastAPI app around an onnxruntime session; ``serve`` runs it with uvicorn. The app counts
the requests and images it answers (``GET /stats``) so that tests can check a client's query count against the
server's, and can answer its first requests badly on purpose (``fail="429:2"``; see :func:`parse_faults`).
"""

from __future__ import annotations

import asyncio
import errno
import io
import json
import os
import socket
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool

from dermadv.errors import ConfigError
from dermadv.models.onnx_session import NUMPY_DTYPES, V2_DATATYPES, OnnxSession

#: Environment variable read by :func:`make_app` when ``fail`` is not given.
FAIL_ENV = "DERMADV_SERVE_FAIL"
FAULT_KINDS = ("html", "nan", "shape", "slow")


@dataclass(frozen=True)
class Fault:
    """How one request is answered badly: an HTTP status (429 comes with ``Retry-After: arg``), an HTML page,
    NaN scores, scores of the wrong shape, or a normal answer after sleeping ``arg`` seconds."""

    kind: str  # a status code ("429", "500", ...) or one of FAULT_KINDS
    arg: float = 0.0


def parse_faults(spec: str | None) -> list[Fault]:
    """``"429:2,500:1,slow:1:3"`` -> the faults for the first requests, in order (kind:count[:arg])."""
    faults: list[Fault] = []
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        kind, _, rest = item.partition(":")
        count, _, arg = rest.partition(":")
        try:
            n = int(count or 1)
            value = float(arg) if arg else (0.1 if kind == "429" else 1.0 if kind == "slow" else 0.0)
        except ValueError:
            n, value = -1, 0.0
        status_ok = kind.isdigit() and 400 <= int(kind) <= 599
        if n < 0 or value < 0 or not (status_ok or kind in FAULT_KINDS):
            raise ConfigError(
                f"fault {item!r} must read kind:count[:arg] with kind a 4xx/5xx status or one of "
                f"{', '.join(FAULT_KINDS)} (e.g. 429:2, 500:1, slow:1:3)"
            )
        faults += [Fault(kind, value)] * n
    return faults


class _Model:
    """An onnxruntime session with the v2 description of its first input and its outputs."""

    def __init__(self, path: Path, threads: int) -> None:
        self.onnx = OnnxSession(path, threads=threads, inter_op_threads=1)
        self.session = self.onnx.session
        self.input = self.onnx.input
        self.datatype = self.onnx.datatype

    def describe(self, name: str) -> dict[str, Any]:
        def tensor(t: Any) -> dict[str, Any]:
            shape = [d if isinstance(d, int) else -1 for d in t.shape]
            return {"name": t.name, "datatype": V2_DATATYPES.get(t.type, t.type), "shape": shape}

        return {
            "name": name,
            "platform": "onnxruntime",
            "inputs": [tensor(t) for t in self.session.get_inputs()],
            "outputs": [tensor(t) for t in self.session.get_outputs()],
        }

    def run(self, images: np.ndarray) -> list[tuple[str, np.ndarray]]:
        return list(zip(self.onnx.output_names, self.onnx.run(images), strict=True))


class _Stats:
    def __init__(self, faults: list[Fault]) -> None:
        self.lock = threading.Lock()
        self.faults = deque(faults)
        self.requests = 0
        self.queries = 0
        self.auth_seen = False

    def arrive(self, headers: Any) -> Fault | None:
        """Counts a request and takes the fault it is to get, if any."""
        with self.lock:
            self.requests += 1
            self.auth_seen = self.auth_seen or "authorization" in headers
            return self.faults.popleft() if self.faults else None

    def answered(self, n: int) -> None:
        with self.lock:
            self.queries += n


def _plain(value: Any) -> Any:
    """json.dumps's fallback for numpy arrays (the fault answers, written with NaN as is)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def make_app(
    onnx_path: str | os.PathLike[str], *, name: str = "model", fail: str | None = None, threads: int = 1
) -> FastAPI:
    """A FastAPI app serving ``onnx_path`` through onnxruntime (``threads`` intra-op threads).

    Routes: ``GET /v2/health/ready``, ``GET /v2/models/{name}``, ``POST /v2/models/{name}/infer`` (KServe v2 JSON),
    ``POST /predict`` (a JSON nested list, or a PNG as multipart field ``file``: ``{"predictions": [[...]]}``),
    ``GET /stats`` (``requests``, ``queries``: images answered, ``auth_seen``: whether an ``Authorization`` header
    came) and ``POST /stats/reset``. ``fail`` (or ``$DERMADV_SERVE_FAIL``) answers the first requests badly;
    see :func:`parse_faults`.
    """
    model = _Model(Path(onnx_path), threads)
    stats = _Stats(parse_faults(fail if fail is not None else os.environ.get(FAIL_ENV)))
    app = FastAPI(title=f"dermadv serve: {name}")
    app.state.stats = stats

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def answer(fault: Fault | None, n: int, compute: Any, shape_answer: Any) -> Any:
        """Runs the model unless the fault says otherwise, and spoils the answer as the fault asks."""
        if fault is not None and fault.kind.isdigit():
            headers = {"Retry-After": f"{fault.arg:g}"} if fault.kind in ("429", "503") else None
            return JSONResponse(
                {"error": f"fault injected: {fault.kind}"}, status_code=int(fault.kind), headers=headers
            )
        if fault is not None and fault.kind == "html":
            return HTMLResponse("<!DOCTYPE html><html><body><h1>Sign in</h1></body></html>")
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.arg)
        try:
            outputs = await run_in_threadpool(model.run, compute())
        except Exception as exc:  # onnxruntime's errors name the bad input dimension; pass them on
            return error(400, (str(exc).splitlines() or ["inference failed"])[0])
        if fault is not None and fault.kind == "nan":
            outputs = [(k, np.full_like(v, np.nan, dtype=np.float32)) for k, v in outputs]
        elif fault is not None and fault.kind == "shape":
            outputs = [(k, v[..., :-1]) for k, v in outputs]
        else:
            stats.answered(n)
        if fault is not None:  # json.dumps writes NaN (orjson writes null): the nan fault needs it as is
            return Response(json.dumps(shape_answer(outputs), default=_plain), media_type="application/json")
        body = orjson.dumps(shape_answer(outputs), option=orjson.OPT_SERIALIZE_NUMPY)
        return Response(body, media_type="application/json")

    @app.get("/v2/health/live")
    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True, "live": True}

    @app.get("/v2/models/{model_name}")
    async def metadata(model_name: str) -> Any:
        if model_name != name:
            return error(404, f"unknown model {model_name!r}; this server serves {name!r}")
        return model.describe(name)

    @app.post("/v2/models/{model_name}/infer")
    async def infer(model_name: str, request: Request) -> Any:
        fault = stats.arrive(request.headers)
        if model_name != name:
            return error(404, f"unknown model {model_name!r}; this server serves {name!r}")
        try:
            payload = orjson.loads(await request.body())
            tensor = payload["inputs"][0]
            datatype = tensor.get("datatype", "FP32")
            if datatype not in NUMPY_DTYPES:
                return error(400, f"datatype {datatype!r} is not supported; send FP32 or UINT8")
            images = np.asarray(tensor["data"], dtype=NUMPY_DTYPES[datatype]).reshape(tensor["shape"])
        except (ValueError, KeyError, IndexError, TypeError, AttributeError, orjson.JSONDecodeError):
            return error(400, 'the body must be {"inputs": [{"name", "shape", "datatype", "data"}]}')
        if tensor.get("name", model.input.name) != model.input.name:
            return error(400, f"unknown input {tensor.get('name')!r}; the model's input is {model.input.name!r}")

        def v2(outputs: list[tuple[str, np.ndarray]]) -> dict[str, Any]:
            return {
                "model_name": name,
                "outputs": [
                    {
                        "name": k,
                        "shape": list(v.shape),
                        "datatype": "FP32",
                        "data": np.ascontiguousarray(v, dtype=np.float32).ravel(),
                    }
                    for k, v in outputs
                ],
            }

        # UINT8 inputs are 8-bit pixels: a model that takes uint8 gets them as sent; a float model (dermadv's exports)
        # takes them in [0, 1]. FP32 inputs go to the model as sent.
        if datatype == "UINT8" and model.datatype == "UINT8":
            return await answer(fault, len(images), lambda: images, v2)
        scale = 1 / 255 if datatype == "UINT8" else 1.0
        return await answer(fault, len(images), lambda: images.astype(np.float32) * np.float32(scale), v2)

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        fault = stats.arrive(request.headers)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            async with request.form() as form:  # closes the uploaded file's spool
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    return error(400, "send the image as multipart field `file`")
                try:
                    pixels = np.asarray(Image.open(io.BytesIO(await upload.read())).convert("RGB"))
                except Exception:  # PIL raises several error types for a file that is not an image
                    return error(400, "the file is not an image PIL can read")
            images = (pixels.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        else:
            try:
                images = np.asarray(await request.json(), dtype=np.float32)
            except (ValueError, TypeError):
                return error(400, "send a JSON nested list N×C×H×W or a PNG as multipart field `file`")

        def plain(outputs: list[tuple[str, np.ndarray]]) -> dict[str, Any]:
            return {"predictions": outputs[0][1].astype(np.float32).tolist()}

        return await answer(fault, len(images), lambda: images, plain)

    @app.get("/stats")
    async def get_stats() -> dict[str, Any]:
        with stats.lock:
            return {"requests": stats.requests, "queries": stats.queries, "auth_seen": stats.auth_seen}

    @app.post("/stats/reset")
    async def reset_stats() -> dict[str, Any]:
        with stats.lock:
            stats.requests = stats.queries = 0
            stats.auth_seen = False
        return {"requests": 0, "queries": 0, "auth_seen": False}

    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or a one-line :class:`ConfigError` saying why not."""
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"--port must be in 1..65535; got {port!r}; choose a port in that range (e.g. 8000)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror:
        raise ConfigError(f"cannot resolve host {host!r}; use an address such as 127.0.0.1 or 0.0.0.0") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart while in TIME_WAIT
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is already in use (another server, or this one still running); choose "
                "another --port"
            ) from None
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another host or port"
        ) from None
    return sock


def serve(
    onnx_path: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str = "model",
    fail: str | None = None,
    log_level: str = "info",
) -> None:
    """Serves ``onnx_path`` with uvicorn until interrupted (see :func:`make_app` for the routes)."""
    import uvicorn

    # binding here turns a bad or busy port into one line, where uvicorn would log a traceback and exit 3; binding
    # first refuses it before the model is loaded
    sock = bind(host, port)
    try:
        app = make_app(onnx_path, name=name, fail=fail)
        uvicorn.Server(uvicorn.Config(app, log_level=log_level)).run(sockets=[sock])
    finally:
        sock.close()
