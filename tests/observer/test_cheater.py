"""A cheating observer: it reads only what the server sends, never the pixels, and must score at chance.

It walks through a study on a real server like an observer and notes, for every image, its HTTP headers,
its byte size, every byte of the PNG outside the pixel data (chunk types and lengths, header chunks, the
zlib header), its response time (the fastest of three fetches) and its position in the sequence. Then it answers with hindsight: in the
2AFC design the image with the larger such record is the altered one; in the one-image design the half
with the larger records is called perturbed. The studies are built from an attack folder written by
``attack_split`` (FGSM on the synthetic set), where every adversarial PNG is larger than its clean twin.
The same cheater is run on the same studies with their images written naively (compressed PNG, size leaking),
where it must win: so the test can fail.
"""

from __future__ import annotations

import http.client
import random
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from scipy.stats import binomtest  # noqa: E402

from dermadv.observer.app import create_app  # noqa: E402
from dermadv.observer.images import PNG_SIGNATURE  # noqa: E402
from dermadv.observer.study import Study, create_study, invite_observer, load_answer_key  # noqa: E402

#: Items per study. The one-image cheater compares sizes across different lesions, a weaker signal than
#: within a pair, so it gets more items to show what it finds in the files written as before.
N_ITEMS = {"2afc": 40, "single": 100}
ITEM = re.compile(r'name="item_id" value="([0-9a-f]{32})"')
#: Response times are compared in whole 10 ms steps, the fastest of a few fetches: finer differences, and the
#: slower fetches, are scheduling noise of this machine.
TIME_STEP_S = 0.01
FETCHES = 3


@dataclass(frozen=True, order=True)
class Served:
    """What the server sent for one image, except its pixels; compared field by field, in this order."""

    content_length: int
    png_layout: tuple[Any, ...]
    headers: tuple[tuple[str, str], ...]
    time_steps: int
    position: int


def png_layout(body: bytes) -> tuple[Any, ...]:
    """Everything in a PNG but its pixel data: chunk types and lengths, non-IDAT chunks' bytes, the zlib header."""
    assert body[:8] == PNG_SIGNATURE, "not a PNG"
    layout: list[Any] = []
    pos, idat = 8, b""
    while pos < len(body):
        length = int.from_bytes(body[pos : pos + 4], "big")
        kind, data = body[pos + 4 : pos + 8], body[pos + 8 : pos + 8 + length]
        layout.append((kind, length, b"" if kind == b"IDAT" else data))
        idat += data if kind == b"IDAT" else b""
        pos += 12 + length
    return (*layout, idat[:2])


class Cheater:
    """One observer's session over raw HTTP: sees status lines, all headers and bodies, and times them."""

    def __init__(self, url: str, token: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        self.origin = url
        self.token = token

    def get(self, path: str) -> tuple[http.client.HTTPResponse, bytes, float]:
        start = time.perf_counter()
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        body = response.read()
        return response, body, time.perf_counter() - start

    def image(self, path: str, position: int) -> Served:
        """Fetch an image a few times, keeping the fastest time: a spike of load on this machine is no signal."""
        sent, times = set(), []
        for _ in range(FETCHES):
            response, body, seconds = self.get(path)
            assert response.status == 200, (path, response.status)
            headers = tuple(sorted((k.lower(), v) for k, v in response.getheaders() if k.lower() != "date"))
            sent.add((body, headers))
            times.append(seconds)
        assert len(sent) == 1, "the same image came back differently"
        return Served(len(body), png_layout(body), headers, int(min(times) / TIME_STEP_S), position)

    def answer(self, item_id: str, answer: str) -> None:
        body = urlencode({"item_id": item_id, "answer": answer, "confidence": "3"})
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Origin": self.origin}
        self.conn.request("POST", f"/s/{self.token}/answer", body, headers)
        response = self.conn.getresponse()
        response.read()
        assert response.status == 303, response.status

    def play(self, design: str) -> Iterator[tuple[str, list[Served]]]:
        """Every item in the order served, with what was sent for its image(s)."""
        position = 0
        while True:
            response, page, _ = self.get(f"/s/{self.token}/rate")
            if response.status == 303:
                return
            item_id = ITEM.search(page.decode()).group(1)  # type: ignore[union-attr]
            base = f"/s/{self.token}/image/{item_id}"
            paths = [base] if design == "single" else [f"{base}/left", f"{base}/right"]
            yield item_id, [self.image(path, position) for path in paths]
            self.answer(item_id, "no" if design == "single" else "left")
            position += 1


@dataclass(frozen=True)
class Score:
    correct: int
    n: int
    distinct_records: int  # distinct (size, PNG layout, headers) among all images served

    @property
    def p_value(self) -> float:
        return float(binomtest(self.correct, self.n, 0.5).pvalue)


def cheat(study: Study, url: str, name: str) -> Score:
    """Play the study as observer ``name`` and score the cheater's hindsight guesses against the key."""
    key = load_answer_key(study.path)
    items = list(Cheater(url, invite_observer(study.path, name).token).play(study.design))
    assert len(items) == study.n_items
    records = {(s.content_length, s.png_layout, s.headers) for _, served in items for s in served}
    if study.design == "2afc":
        correct = sum(
            ("left" if left > right else "right") == key[item_id].altered_side for item_id, (left, right) in items
        )
    else:
        # stable sort: ties keep the served order, so position decides among equal records
        ranked = sorted(items, key=lambda item: item[1][0], reverse=True)
        called = {item_id for item_id, _ in ranked[: len(ranked) // 2]}
        correct = sum((item_id in called) == key[item_id].altered for item_id, _ in items)
    return Score(correct, len(items), len(records))


def write_as_before(study: Study) -> None:
    """Re-encode the study's images naively (compressed PNG, so file sizes leak)."""
    for path in (study.path / "images").glob("*.png"):
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        rgb.save(path, format="PNG", compress_level=6)


@pytest.fixture(scope="module")
def real_attack_dir(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """``attack_split`` (FGSM, 2/255) of an untrained classifier on every image of the synthetic set."""
    from dermadv.data.classes import CLASSES
    from dermadv.models.checkpoints import CheckpointMeta, save_checkpoint
    from dermadv.models.classifier import build_classifier
    from dermadv.pipeline.attack import AttackRunConfig, attack_split

    root = tmp_path_factory.mktemp("cheater")
    checkpoint = root / "clf" / "model.safetensors"
    meta = CheckpointMeta(arch="resnet18", classes=CLASSES, image_size=(32, 32))
    save_checkpoint(checkpoint, build_classifier("resnet18", len(CLASSES)), meta)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DERMADV_CACHE", str(root / "cache"))
        config = AttackRunConfig(
            checkpoint=checkpoint,
            out=root / "adv",
            method="fgsm",
            data=str(synthetic_root),
            split="all",
            target=None,
            eps="2/255",
            attack_size="stored",
            evaluate=False,
            progress=False,
        )
        attack_split(config)
    clean = sorted((root / "adv" / "images" / "clean").glob("*.png"))
    adv = root / "adv" / "images" / "adv"
    # the leak the study must hide: every compressed adversarial PNG here is larger than its clean twin
    assert len(clean) >= max(N_ITEMS.values()) and all((adv / p.name).stat().st_size > p.stat().st_size for p in clean)
    return root / "adv"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("design", ["2afc", "single"])
def test_cheater_scores_at_chance_now_and_far_above_before(
    real_attack_dir: Path,
    tmp_path: Path,
    design: str,
    live_server,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Seeded item ids make the whole walk reproducible: the served order (and so the cheater's tie-break by
    # position) then follows from the seeds, and only response times vary between runs.
    ids = random.Random(f"cheater-{design}")
    monkeypatch.setattr(secrets, "token_hex", lambda nbytes: ids.randbytes(nbytes).hex())
    study = create_study(
        real_attack_dir, tmp_path / "study", n=N_ITEMS[design], design=design, perturbed_share=0.5, seed=3
    )
    with live_server(create_app(study.path)) as url:
        now = cheat(study, url, "cheater")
        write_as_before(study)
        before = cheat(study, url, "cheater on the old files")
    with capsys.disabled():
        print(
            f"\ncheater, {design}: {now.correct}/{now.n} (binomial p = {now.p_value:.3g}) now; "
            f"{before.correct}/{before.n} (p = {before.p_value:.2g}) with the files written as before"
        )
    # every image of the study looks the same from outside: one size, one layout, the same headers
    assert now.distinct_records == 1
    assert now.p_value > 0.05, f"{now.correct}/{now.n}: the cheater beats chance"
    assert before.distinct_records > 1
    assert before.p_value < 1e-4 and before.correct > before.n / 2, f"{before.correct}/{before.n}"
