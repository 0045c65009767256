"""How close dermadv's HTTP client comes to what an inference endpoint can serve: images/s of a plain load generator
against images/s of dermadv's own client, on the same endpoint, protocol, datatype and batch size.

    dermadv model serve runs/sources-recipe/model.onnx --port 8000 &
    python benchmarks/endpoint_throughput.py --url http://127.0.0.1:8000/v2/models/model/infer \
        --card runs/sources-recipe/http.card.yaml --seconds 20 --out throughput.json

1. Load generator: ``--concurrency`` connections (default: the card's ``http.concurrency``) each sending one fixed
   KServe v2 request of ``--batch`` images (default: the card's ``http.batch_size``) again and again for
   ``--seconds``, with the body built as dermadv builds it (the card's input name, layout and datatype; pixels
   prepared by the card) and encoded once; answers are checked for status 200 only.
2. dermadv: ``load_model(URL, card=CARD, threat_model="score-based")`` called on batches of ``--client-batch`` images
   (default 256, what ``dermadv audit`` hands a query-based attack) for ``--seconds``: 8-bit rounding, the card's
   preparation, request encoding, the endpoint's batch size and concurrency, answer checks.
3. With ``--audit-folder``: the queries/s of that run's attack (``attack.json``, ``queries`` section): images the
   model answered during the attack per second of the attack's wall time.

The target is dermadv at ≥ 80% of the load generator. Where the server runs ``dermadv model serve``, its ``/stats``
counter is read before and after each phase, so the images counted here can be checked against those it answered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np
import orjson
import torch

from dermadv.models.card import CardAdapter, HttpSettings, ModelCard, load_card
from dermadv.models.http import infer_url
from dermadv.models.sources import load_model
from dermadv.runs import read_json

TARGET_RATIO = 0.8


def random_images(batch: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def request_body(card: ModelCard, settings: HttpSettings, images: torch.Tensor) -> bytes:
    """The KServe v2 request for ``images`` (N×3×H×W in [0, 1]), byte for byte what dermadv's client sends for them
    in one request (:meth:`HttpBackend._infer` after the source model's 8-bit rounding and the card's preparation)."""
    images = torch.round(images.clamp(0, 1) * 255) / 255
    chunk = CardAdapter(torch.nn.Identity(), card).prepare(images).numpy().astype(np.float32)
    data = np.clip(np.rint(chunk), 0, 255).astype(np.uint8) if settings.datatype == "UINT8" else chunk
    body = {
        "inputs": [
            {
                "name": settings.input_name,
                "shape": list(chunk.shape),
                "datatype": settings.datatype,
                "data": np.ascontiguousarray(data).ravel(),
            }
        ]
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def stats_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/stats", "", ""))


def server_stats(url: str) -> dict[str, Any] | None:
    """``GET /stats`` of a ``dermadv model serve`` endpoint; None where the server has none."""
    try:
        response = httpx.get(stats_url(url), timeout=5)
        return response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def _served(before: dict[str, Any] | None, after: dict[str, Any] | None) -> int | None:
    if before is None or after is None:
        return None
    return int(after["queries"]) - int(before["queries"])


async def _load(url: str, endpoint: str, body: bytes, batch: int, concurrency: int, seconds: float) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=concurrency + 1, max_keepalive_connections=concurrency + 1)
    headers = {"Content-Type": "application/json"}
    ok = errors = 0
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def stats() -> dict[str, Any] | None:
            try:
                response = await client.get(stats_url(url))
                return response.json() if response.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                return None

        async def worker(deadline: float | None) -> None:
            nonlocal ok, errors
            while True:
                response = await client.post(endpoint, content=body, headers=headers)
                await response.aread()
                if deadline is None:
                    return
                ok, errors = (ok + 1, errors) if response.status_code == 200 else (ok, errors + 1)
                if time.perf_counter() >= deadline:
                    return

        await asyncio.gather(*(worker(None) for _ in range(concurrency)))  # open the connections, warm up
        before = await stats()
        start = time.perf_counter()
        await asyncio.gather(*(worker(start + seconds) for _ in range(concurrency)))
        wall = time.perf_counter() - start
        after = await stats()
    return {
        "requests": ok,
        "errors": errors,
        "images": ok * batch,
        "wall_s": wall,
        "server_answered": _served(before, after),
    }


def load_generator(
    url: str, settings: HttpSettings, body: bytes, *, batch: int, concurrency: int, seconds: float
) -> dict[str, Any]:
    """``concurrency`` connections sending ``body`` for ``seconds``: the images/s the endpoint serves."""
    result = asyncio.run(_load(url, infer_url(url, settings), body, batch, concurrency, seconds))
    result["images_per_s"] = result["images"] / result["wall_s"]
    return result


def dermadv_client(url: str, card_path: str, *, batch: int, seconds: float, seed: int = 0) -> dict[str, Any]:
    """dermadv's client called on ``batch`` images at a time for ``seconds``: images/s end to end."""
    model = load_model(url, card=card_path, threat_model="score-based")
    images = random_images(batch, model.info.image_size or (224, 224), seed)
    with torch.no_grad():
        model(images[: min(batch, 8)])  # connections, thread pool
        before_queries = model.counter.queries
        before = server_stats(url)
        start = time.perf_counter()
        calls = 0
        while time.perf_counter() - start < seconds:
            model(images)
            calls += 1
        wall = time.perf_counter() - start
    images_done = model.counter.queries - before_queries
    return {
        "calls": calls,
        "images": images_done,
        "wall_s": wall,
        "images_per_s": images_done / wall,
        "model_seconds": round(model.counter.seconds, 3),
        "server_answered": _served(before, server_stats(url)),
    }


def audit_rate(folder: Path) -> dict[str, Any]:
    """The queries/s of an audit's (or an attack folder's) attack, from its ``attack.json``."""
    path = (
        folder / "attack" / "attack.json" if (folder / "attack" / "attack.json").is_file() else folder / "attack.json"
    )
    queries = read_json(path).get("queries") or {}
    if not queries.get("wall_seconds"):
        raise SystemExit(f"{path} has no queries section with wall_seconds; pass the --out of `dermadv audit`")
    return {
        "attack_json": str(path),
        "queries": queries["queries"],
        "wall_s": queries["wall_seconds"],
        "model_seconds": queries.get("model_seconds"),
        "images_per_s": queries["queries"] / queries["wall_seconds"],
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    card = load_card(args.card)
    settings = card.http or HttpSettings()
    if settings.protocol != "v2":
        raise SystemExit(f"{args.card}: http.protocol is {settings.protocol!r}; this benchmark speaks KServe v2 only")
    if card.input_size is None:
        raise SystemExit(f"{args.card}: set input_size; the load generator must know the image size")
    batch = args.batch or settings.batch_size
    concurrency = args.concurrency or settings.concurrency
    body = request_body(card, settings, random_images(batch, card.input_size))
    print(
        f"endpoint {infer_url(args.url, settings)}: {settings.datatype}, {batch} images per request "
        f"({len(body) / 1e6:.2f} MB), {concurrency} connections, {args.seconds:g} s per phase"
    )
    gen = load_generator(args.url, settings, body, batch=batch, concurrency=concurrency, seconds=args.seconds)
    print(
        f"load generator: {gen['images_per_s']:.1f} images/s ({gen['requests']} requests, {gen['errors']} errors; "
        f"server answered {gen['server_answered']})"
    )
    client = dermadv_client(args.url, args.card, batch=args.client_batch, seconds=args.seconds)
    ratio = client["images_per_s"] / gen["images_per_s"] if gen["images_per_s"] else float("nan")
    print(
        f"dermadv client: {client['images_per_s']:.1f} images/s ({client['calls']} calls of {args.client_batch}; "
        f"server answered {client['server_answered']}) = {ratio:.1%} of the load generator "
        f"(target ≥ {TARGET_RATIO:.0%}: {'met' if ratio >= TARGET_RATIO else 'NOT met'})"
    )
    report: dict[str, Any] = {
        "url": infer_url(args.url, settings),
        "card": str(args.card),
        "datatype": settings.datatype,
        "batch": batch,
        "concurrency": concurrency,
        "card_http": {"batch_size": settings.batch_size, "concurrency": settings.concurrency},
        "client_batch": args.client_batch,
        "seconds": args.seconds,
        "load_generator": gen,
        "dermadv_client": client,
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
    }
    if args.audit_folder:
        audit = audit_rate(Path(args.audit_folder))
        audit["ratio"] = audit["images_per_s"] / gen["images_per_s"] if gen["images_per_s"] else float("nan")
        report["audit"] = audit
        print(
            f"audit attack ({audit['attack_json']}): {audit['images_per_s']:.1f} queries/s = {audit['ratio']:.1%} "
            "of the load generator (measured now; the audit ran earlier, perhaps under another load)"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", required=True, help="the endpoint, as given to `dermadv audit --model`")
    parser.add_argument("--card", required=True, help="the model card with the endpoint's http section")
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase")
    parser.add_argument("--concurrency", type=int, default=None, help="load generator connections (card's default)")
    parser.add_argument("--batch", type=int, default=None, help="images per request (default: the card's)")
    parser.add_argument("--client-batch", type=int, default=256, help="images per call of dermadv's client")
    parser.add_argument("--audit-folder", default=None, help="a `dermadv audit --out` folder to read queries/s from")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
