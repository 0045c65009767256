"""A black-box model behind an HTTP endpoint: the Open Inference Protocol v2 (KServe) or a plain JSON/PNG route.

:class:`HttpBackend` takes the already prepared model input (what :meth:`CardAdapter.prepare` returns) and gives
back the endpoint's scores or labels as numpy. It batches, keeps a few requests in flight, keeps to a rate limit
and retries overloaded or failing endpoints with exponential backoff and jitter, honouring ``Retry-After``. Every
answer is checked (JSON, shape, count, finite values) and refused with one line otherwise. Header values (API
keys) are read from the environment at construction and appear in no message, log line or repr.
"""

from __future__ import annotations

import email.utils
import io
import json
import logging
import math
import random
import re
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import numpy as np
import orjson

from dermadv.errors import ConfigError, ModelError
from dermadv.models.card import OUTPUTS, HttpSettings

log = logging.getLogger(__name__)

#: A ``Retry-After`` longer than this (seconds) is refused at once rather than slept through.
MAX_RETRY_AFTER = 120.0
#: The longest backoff between two tries, in seconds.
MAX_BACKOFF = 30.0
#: Status codes worth another try: rate limited, or the server (or a proxy in front of it) failed.
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})

_FIXES = {
    400: "check http.input_name, http.datatype and the card's input_size and layout",
    401: "check the credentials in the environment variables named by http.headers_env",
    403: "check the credentials in the environment variables named by http.headers_env",
    404: "check the URL and http.model_name",
    405: "check the URL: this route does not take POST",
    413: "lower http.batch_size",
    415: "check http.protocol and http.request",
    422: "check http.input_name, http.datatype and the card's input_size and layout",
}


class _Aborted(Exception):
    """Another request of the same call failed; this one stops without trying again."""


class _RateLimiter:
    """Spaces request starts at least ``1 / rate`` seconds apart, across threads."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self, abort: threading.Event) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now and abort.wait(start - now):
            raise _Aborted


def display_url(url: str) -> str:
    """``url`` without credentials, query string or fragment: safe to print."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def infer_url(url: str, settings: HttpSettings) -> str:
    """The URL to POST to: ``url`` itself for plain endpoints and v2 URLs ending ``/infer``; otherwise the v2
    route ``{url}/v2/models/{model_name}/infer`` (or ``{url}/infer`` when ``url`` already names the model)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"model URL must start with http:// or https:// and name a host; got {display_url(url)!r}")
    if settings.protocol == "plain":
        return url
    path = parts.path.rstrip("/")
    if path.endswith("/infer"):
        return url
    if re.search(r"/v2/models/[^/]+(/versions/[^/]+)?$", path):
        path += "/infer"
    elif settings.model_name:
        path += f"/v2/models/{quote(settings.model_name, safe='')}/infer"
    else:
        raise ConfigError(
            f"cannot tell the v2 inference route from {display_url(url)}: set http.model_name in the card, or give "
            "the full URL .../v2/models/<name>/infer"
        )
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def dig(answer: Any, path: str) -> Any:
    """The value at a dotted ``path`` in a parsed JSON answer; integers index lists (``outputs.0.data``)."""
    value = answer
    for key in path.split(".") if path else []:
        if isinstance(value, list) and re.fullmatch(r"-?\d+", key):
            if not -len(value) <= int(key) < len(value):
                raise KeyError(f"index {key} is out of range for a list of {len(value)}")
            value = value[int(key)]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            have = ", ".join(map(str, list(value)[:8])) if isinstance(value, dict) else type(value).__name__
            raise KeyError(f"no {key!r} there (found: {have})")
    return value


def encode_png(image: np.ndarray) -> bytes:
    """One 3×H×W image in [0, 1] as an 8-bit RGB PNG."""
    from PIL import Image

    pixels = np.clip(np.rint(image.transpose(1, 2, 0) * 255.0), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class HttpBackend:
    """Calls an inference endpoint on prepared model inputs; returns N×num_classes scores (or N labels).

    Args:
        url: the server root (with ``settings.model_name``), a v2 ``.../infer`` URL, or a plain route.
        settings: the card's ``http`` section.
        num_classes: how many scores the endpoint returns per image.
        output: the card's ``output`` (``logits``, ``probabilities`` or ``label``).
        classes: the card's class names, in its order: answers may then name classes instead of indexing them
            (a label ``"mel"``; scores as ``{"mel": 0.1, …}`` or as Hugging Face's ``[{"label", "score"}, …]``).
        backoff: the first retry's delay in seconds; it doubles with each retry (with jitter), up to 30 s.

    Counters (thread-safe): ``requests`` (HTTP answers, errors included), ``queries`` (images answered),
    ``retried`` (tries again) and ``seconds`` (wall time spent waiting for the endpoint).
    """

    def __init__(
        self,
        url: str,
        settings: HttpSettings,
        *,
        num_classes: int,
        output: str,
        classes: tuple[str, ...] | None = None,
        backoff: float = 0.5,
    ) -> None:
        if output not in OUTPUTS:
            raise ConfigError(f"output must be one of {', '.join(OUTPUTS)}; got {output!r}")
        if num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2; got {num_classes}")
        checks = {
            "batch_size": settings.batch_size >= 1,
            "concurrency": settings.concurrency >= 1,
            "retries": settings.retries >= 0,
            "timeout": settings.timeout > 0,
            "rate_limit": settings.rate_limit >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(
                f"model card http: {', '.join(bad)} out of range (batch_size, concurrency >= 1; retries >= 0; "
                f"timeout > 0; rate_limit >= 0); got {', '.join(f'{n}={getattr(settings, n)!r}' for n in bad)}"
            )
        self._endpoint = infer_url(url, settings)
        self.url = display_url(self._endpoint)  # what messages and the repr show: no credentials, no query
        self.settings = settings
        self.num_classes = num_classes
        self.classes = classes
        if classes is not None and len(classes) != num_classes:
            raise ConfigError(f"{len(classes)} class names for {num_classes} classes; name each class once")
        self.output = output
        self.backoff = backoff
        headers = settings.headers()
        parts = urlsplit(url)
        # every secret we hold, so that no message can carry one even if a server echoes it back
        self._secrets = sorted(
            {v for v in [*headers.values(), parts.password or "", parts.query] if len(v) >= 3}, key=len, reverse=True
        )
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(settings.timeout),
            limits=httpx.Limits(max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency),
        )
        self._limiter = _RateLimiter(settings.rate_limit)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._counts = {"requests": 0, "queries": 0, "retried": 0}
        self._seconds = 0.0
        self._codec = 0.0  # seconds spent encoding requests and checking answers: dermadv's time, not the model's

    # counters
    @property
    def requests(self) -> int:
        with self._lock:
            return self._counts["requests"]

    @property
    def queries(self) -> int:
        with self._lock:
            return self._counts["queries"]

    @property
    def retried(self) -> int:
        with self._lock:
            return self._counts["retried"]

    @property
    def seconds(self) -> float:
        with self._lock:
            return self._seconds

    @property
    def codec_seconds(self) -> float:
        """Time spent turning arrays into requests and answers into arrays (holding the GIL, so it adds up)."""
        with self._lock:
            return self._codec

    def _add_codec(self, seconds: float) -> None:
        with self._lock:
            self._codec += seconds

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def __repr__(self) -> str:
        return f"HttpBackend(url={self.url!r}, settings={self.settings!r}, output={self.output!r})"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim < 2:
            raise ConfigError(f"the endpoint takes a batch of images; got an array of shape {batch.shape}")
        if self.settings.protocol == "plain" and self.settings.request == "image":
            _check_image_batch(batch)
            step = 1
        else:
            step = balanced_step(len(batch), self.settings.batch_size, self.settings.concurrency)
        chunks = [batch[i : i + step] for i in range(0, len(batch), step)]
        if not chunks:
            if self.output == "label":
                return np.zeros(0, dtype=np.int64)
            return np.zeros((0, self.num_classes), dtype=np.float32)
        start = time.monotonic()
        try:
            results = self._map(chunks)
        finally:
            with self._lock:
                self._seconds += time.monotonic() - start
        return np.concatenate(results)

    def _map(self, chunks: list[np.ndarray]) -> list[np.ndarray]:
        abort = threading.Event()
        if len(chunks) == 1 or self.settings.concurrency == 1:
            return [self._infer(chunk, abort) for chunk in chunks]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="dermadv-http")
            pool = self._pool
        futures: list[Future[np.ndarray]] = [pool.submit(self._infer, chunk, abort) for chunk in chunks]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        if any(f.exception() is not None for f in done):
            abort.set()  # the others stop at their next try instead of retrying on
            for f in futures:
                f.cancel()
            wait(futures)
            errors = [e for f in futures if not f.cancelled() and (e := f.exception()) is not None]
            raise next((e for e in errors if not isinstance(e, _Aborted)), errors[0])
        return [f.result() for f in futures]

    def _infer(self, chunk: np.ndarray, abort: threading.Event) -> np.ndarray:
        n = len(chunk)
        s = self.settings
        t0 = time.perf_counter()
        if s.protocol == "v2":
            uint8 = s.datatype == "UINT8"
            data = np.clip(np.rint(chunk), 0, 255).astype(np.uint8) if uint8 else chunk
            body = {
                "inputs": [
                    {
                        "name": s.input_name,
                        "shape": list(chunk.shape),
                        "datatype": s.datatype,
                        "data": np.ascontiguousarray(data).ravel(),
                    }
                ]
            }
            content = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)  # 18× json's speed on image batches
            self._add_codec(time.perf_counter() - t0)
            answer = self._post(abort, content=content, headers={"Content-Type": "application/json"})
            t0 = time.perf_counter()
            raw = self._v2_output(answer, n)
        else:
            if s.request == "image":
                files = {"file": ("image.png", encode_png(chunk[0]), "image/png")}
                answer = self._post(abort, files=files)
            else:
                data = np.clip(np.rint(chunk), 0, 255).astype(np.uint8) if s.datatype == "UINT8" else chunk
                answer = self._post(
                    abort, content=json.dumps(data.tolist()).encode(), headers={"Content-Type": "application/json"}
                )
            try:
                raw = dig(answer, s.response_path)
            except KeyError as exc:
                raise ModelError(
                    self._scrub(
                        f"{self.url} answered without {s.response_path!r}: {exc.args[0]}; set http.response_path"
                    )
                ) from None
        result = self._check(raw, n)
        if s.protocol == "v2":
            self._add_codec(time.perf_counter() - t0)
        self._count("queries", n)
        return result

    def _post(self, abort: threading.Event, **kwargs: Any) -> Any:
        """POST with retries; the parsed JSON answer of the first 2xx response."""
        s = self.settings
        for attempt in range(s.retries + 1):
            if abort.is_set():
                raise _Aborted
            self._limiter.wait(abort)
            retry_after = None
            try:
                response = self._client.post(self._endpoint, **kwargs)
            except httpx.TimeoutException:
                reason = f"did not answer within {s.timeout:g} s"
                fix = "raise http.timeout or lower http.batch_size"
            except httpx.TransportError as exc:
                reason = f"could not be reached ({type(exc).__name__})"
                fix = "check the URL and that the server is running"
            else:
                self._count("requests")
                if 200 <= response.status_code < 300:
                    return self._json(response)
                if response.status_code not in RETRY_STATUS:
                    raise ModelError(self._refusal(response))
                reason = f"answered {response.status_code} {response.reason_phrase}".rstrip()
                fix = (
                    "lower http.concurrency or http.rate_limit"
                    if response.status_code == 429
                    else "the endpoint is failing or overloaded: check its logs, lower http.batch_size or raise http.retries"
                )
                retry_after = _retry_after(response.headers.get("Retry-After"))
                if retry_after is not None and retry_after > MAX_RETRY_AFTER:
                    raise ModelError(
                        f"{self.url} {reason} and asks to wait {retry_after:.0f} s (Retry-After); try later or {fix}"
                    )
            if attempt == s.retries:
                tries = f"after {s.retries} retries" if s.retries else "(no retries: http.retries is 0)"
                raise ModelError(self._scrub(f"{self.url} {reason} {tries}; {fix}"))
            delay = min(MAX_BACKOFF, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)
            if retry_after is not None:
                delay = retry_after + random.uniform(0.0, min(0.1 * retry_after + 0.01, 1.0))
            self._count("retried")
            log.info("%s %s; retry %d of %d in %.2f s", self.url, reason, attempt + 1, s.retries, delay)
            if abort.wait(delay):
                raise _Aborted
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, response: httpx.Response) -> Any:
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            pass  # NaN and Infinity are not JSON, but some servers write them: parse, then refuse them by name
        try:
            return json.loads(response.content)
        except (json.JSONDecodeError, UnicodeDecodeError):
            kind = response.headers.get("Content-Type", "no content type").split(";")[0]
            raise ModelError(
                self._scrub(
                    f"{self.url} answered {kind} ({_snippet(response.text)!r}), not JSON; check that the URL is the "
                    "inference route and not a login page or proxy"
                )
            ) from None

    def _refusal(self, response: httpx.Response) -> str:
        code = response.status_code
        detail = ""
        try:
            body = json.loads(response.content)
            if isinstance(body, dict):
                detail = str(body.get("error") or body.get("detail") or body.get("message") or "")
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
        detail = f" ({_snippet(detail)})" if detail else ""
        fix = _FIXES.get(code, "check the URL and the card's http section")
        if code in (401, 403) and self.settings.headers_env:
            fix += f" ({', '.join(self.settings.headers_env.values())})"
        if 300 <= code < 400:
            fix = f"use the final URL{' ' + display_url(response.headers['Location']) if 'Location' in response.headers else ''}"
        return self._scrub(f"{self.url} answered {code} {response.reason_phrase}{detail}; {fix}")

    def _v2_output(self, answer: Any, n: int) -> Any:
        outputs = answer.get("outputs") if isinstance(answer, dict) else None
        if not isinstance(outputs, list) or not outputs or not all(isinstance(o, dict) for o in outputs):
            have = ", ".join(map(str, list(answer)[:8])) if isinstance(answer, dict) else type(answer).__name__
            raise ModelError(
                self._scrub(
                    f"{self.url} answered without an `outputs` list (found: {have}); is it an Open Inference Protocol "
                    "v2 endpoint? Otherwise set http.protocol: plain"
                )
            )
        want = n if self.output == "label" else n * self.num_classes
        # a model may return several outputs (say logits and a label): take the first one of the expected size
        chosen = next((o for o in outputs if _size(o.get("shape")) == want), outputs[0])
        data, shape = chosen.get("data"), chosen.get("shape")
        try:
            array = np.asarray(data, dtype=np.float64)
        except (TypeError, ValueError):
            raise ModelError(
                self._scrub(f"{self.url} answered non-numeric data in output {chosen.get('name')!r}; expected scores")
            ) from None
        if isinstance(shape, list) and all(isinstance(d, int) for d in shape):
            if math.prod(shape) != array.size:
                raise ModelError(
                    f"{self.url} answered {array.size} values for output shape {shape}; the endpoint is inconsistent"
                )
            array = array.reshape(shape)
        return array

    def _by_name(self, raw: Any, n: int) -> Any:
        """Answers that name classes, put in the card's order: a label name (or one per image); per image a dict
        of name -> score, or Hugging Face's list of ``{"label", "score"}`` (every class, not a top-k)."""
        if self.classes is None:
            return raw
        classes = self.classes

        def index(name: str) -> int:
            if name not in classes:
                raise ModelError(
                    self._scrub(
                        f"{self.url} answered class {_snippet(name)!r}, not one of the card's classes "
                        f"({', '.join(classes)}); fix `classes` in the card"
                    )
                )
            return classes.index(name)

        if self.output == "label":
            names = [raw] if isinstance(raw, str) else raw
            if isinstance(names, list) and names and all(isinstance(x, str) for x in names):
                return [index(x) for x in names]
            return raw

        def scores(item: Any) -> list[float] | None:
            if (
                isinstance(item, list)
                and item
                and all(isinstance(d, dict) and {"label", "score"} <= set(d) for d in item)
            ):
                item = {str(d["label"]): d["score"] for d in item}
            if not (isinstance(item, dict) and item and any(key in classes for key in item)):
                return None  # not an answer by class name: a wrapper such as {"predictions": …} (http.response_path)
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in item.values()):
                return None
            row = [math.nan] * len(classes)
            for name, score in item.items():
                row[index(name)] = score
            missing = [c for c, v in zip(classes, row, strict=True) if isinstance(v, float) and math.isnan(v)]
            if missing:
                raise ModelError(
                    self._scrub(
                        f"{self.url} answered scores for {len(classes) - len(missing)} of {len(classes)} classes "
                        f"(none for {', '.join(missing)}); ask the endpoint for every class (Hugging Face: top_k="
                        f"{len(classes)})"
                    )
                )
            return row

        one = scores(raw) if n == 1 else None
        if one is not None:
            return [one]
        if isinstance(raw, list) and len(raw) == n:
            rows = [scores(item) for item in raw]
            if all(row is not None for row in rows):
                return rows
        return raw

    def _check(self, raw: Any, n: int) -> np.ndarray:
        k = self.num_classes
        raw = self._by_name(raw, n)
        try:
            array = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError):
            raise ModelError(
                self._scrub(
                    f"{self.url} answered {_snippet(json.dumps(raw, default=str))!r}, not numbers; set http.response_path"
                )
            ) from None
        if self.output == "label":
            if array.size != n:
                raise ModelError(
                    f"{self.url} answered {array.size} labels for {n} images; expected one label per image"
                )
            array = array.reshape(n)
            if not np.all(np.isfinite(array)) or np.any(array != np.rint(array)) or np.any((array < 0) | (array >= k)):
                raise ModelError(
                    f"{self.url} answered labels outside 0..{k - 1}; a label-only endpoint must return class indices "
                    "in the card's classes order"
                )
            return array.astype(np.int64)
        if array.ndim == 1 and n == 1:
            array = array.reshape(1, -1)
        if array.shape != (n, k):
            raise ModelError(
                f"{self.url} answered shape {list(array.shape)} for {n} images; expected [{n}, {k}] ({k} classes in "
                "the card): fix `classes` in the card, or http.response_path"
            )
        if not np.all(np.isfinite(array)):
            bad = int((~np.isfinite(array)).any(axis=1).sum())
            raise ModelError(
                f"{self.url} answered NaN or infinite scores for {bad} of {n} images; the model is broken or its input "
                "is out of range (check value_range, mean and std in the card)"
            )
        return array.astype(np.float32)

    def _scrub(self, message: str) -> str:
        for secret in self._secrets:
            message = message.replace(secret, "***")
        return " ".join(message.split())

    def close(self) -> None:
        """Closes the connections and the worker threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._client.close()

    def __enter__(self) -> HttpBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def balanced_step(n: int, batch_size: int, concurrency: int) -> int:
    """Images per request: at most ``batch_size``, in a number of requests that fills every connection in each round.

    288 images at batch size 64 over 2 connections go as 6 requests of 48 (3 full rounds) rather than 4 of 64 and one
    of 32 (a last round with one connection idle): the endpoint is kept busy until the call's last answer. A call that
    fits one round is sent as it is.
    """
    requests = -(-n // batch_size)
    if requests <= concurrency:  # one round already: splitting would only add round trips
        return batch_size
    requests = -(-requests // concurrency) * concurrency
    return max(1, -(-n // requests))


def _check_image_batch(batch: np.ndarray) -> None:
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ConfigError(
            f"http.request: image sends N×3×H×W RGB images; got shape {list(batch.shape)} — set layout: NCHW in the card"
        )
    if batch.size and (batch.min() < -1e-3 or batch.max() > 1 + 1e-3):
        raise ConfigError(
            "http.request: image sends 8-bit PNGs of images in [0, 1]; the prepared input is outside [0, 1] — set "
            "value_range: 1 and no mean/std in the card (the endpoint normalises its own input)"
        )


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _size(shape: Any) -> int | None:
    if isinstance(shape, list) and all(isinstance(d, int) for d in shape):
        return math.prod(shape)
    return None


def _snippet(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


__all__ = ["HttpBackend", "dig", "display_url", "encode_png", "infer_url"]
