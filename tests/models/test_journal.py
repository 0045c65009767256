"""The query journal: answers kept across a killed run, read back instead of asked again."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dermadv.data.classes import CLASSES
from dermadv.errors import RunError
from dermadv.models.card import CardAdapter, ModelCard
from dermadv.models.journal import HEADER_SIZE, QueryJournal, image_keys
from dermadv.models.sources import BlackBox, ModelInfo, SourceModel

K = len(CLASSES)


def keys(n: int, seed: int = 0) -> list[bytes]:
    return image_keys(np.random.default_rng(seed).integers(0, 256, (n, 3, 8, 8), dtype=np.uint8))


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, K)).astype(np.float32)


def journal(path: Path, identity: str = "model-a") -> QueryJournal:
    return QueryJournal(path, width=K, identity=identity, sync=False)


def test_answers_recorded_by_one_run_are_replayed_by_the_next_bit_for_bit(tmp_path: Path):
    path = tmp_path / "queries.journal"
    with journal(path) as first:
        assert first.replayable == 0
        first.record(keys(3), rows(3))
        first.record(keys(2, seed=1), rows(2, seed=1))
        found, _ = first.replay(keys(3))
        assert not found.any()  # what this process was answered goes to the model again, as without a journal
    assert path.stat().st_size == HEADER_SIZE + 5 * first.record_size
    with journal(path) as second:
        assert second.replayable == 5
        asked = [*keys(2, seed=1), *keys(1, seed=7), *keys(3)]
        found, answers = second.replay(asked)
        assert found.tolist() == [True, True, False, True, True, True]
        np.testing.assert_array_equal(answers[:2], rows(2, seed=1))
        np.testing.assert_array_equal(answers[3:], rows(3))
        assert not answers[2].any()


def test_a_torn_or_corrupt_last_record_is_dropped_and_the_journal_goes_on(tmp_path: Path):
    path = tmp_path / "queries.journal"
    with journal(path) as first:
        first.record(keys(4), rows(4))
    whole = path.read_bytes()
    path.write_bytes(whole[:-7])  # killed in the middle of the last record
    with journal(path) as second:
        assert second.replayable == 3 and second.dropped == first.record_size - 7
        second.record(keys(1, seed=2), rows(1, seed=2))  # appended after the last whole record
    with journal(path) as third:
        assert third.replayable == 4 and third.dropped == 0
        assert third.replay(keys(1, seed=2))[0].all() and third.replay(keys(4))[0].tolist() == [True] * 3 + [False]
    corrupt = bytearray(path.read_bytes())
    corrupt[HEADER_SIZE + first.record_size + 20] ^= 0xFF  # a flipped bit in the second record's scores
    path.write_bytes(bytes(corrupt))
    with journal(path) as fourth:
        assert fourth.replayable == 1  # the records from the corrupt one on are not trusted
    path.write_bytes(whole[:10])  # killed while writing the header
    assert journal(path).replayable == 0


def test_a_journal_of_another_model_or_no_journal_is_refused(tmp_path: Path):
    path = tmp_path / "queries.journal"
    journal(path).close()
    with pytest.raises(RunError, match="answers of another model") as exc:
        journal(path, identity="model-b")
    assert "\n" not in str(exc.value)
    with pytest.raises(RunError, match="answers of another model"):
        QueryJournal(path, width=K + 1, identity="model-a")
    other = tmp_path / "notes.txt"
    other.write_text("x" * 64)
    with pytest.raises(RunError, match="not a dermadv query journal"):
        journal(other)


class Scores:
    """A black box that remembers every batch it was sent."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, K)).eval()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.sent.append(len(batch))
        with torch.no_grad():
            return self.net(torch.from_numpy(batch)).numpy()


def black_box(backend: Scores) -> SourceModel:
    card = ModelCard(input_size=(8, 8))
    offers = ("score-based", "decision-based", "transfer")
    info = ModelInfo("fake", "onnx", CLASSES, (8, 8), "0123456789abcdef", offers, card)
    return SourceModel(CardAdapter(BlackBox(backend, name="fake"), card), info, quantise=True).eval()


def test_a_black_box_answers_from_its_journal_and_counts_only_what_it_sent(tmp_path: Path):
    images = torch.round(torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 255) / 255
    first_backend = Scores()
    first = black_box(first_backend)
    assert first.open_journal(tmp_path / "queries.journal") is not None
    expected = first(images[:3])
    assert first.counter.queries == 3 and first.counter.replayed == 0
    assert first.journal is not None
    first.journal.close()

    backend = Scores()
    second = black_box(backend)
    opened = second.open_journal(tmp_path / "queries.journal")
    assert opened is not None and opened.replayable == 3
    # the same 8-bit images, whatever float noise they carry: the key is what the model receives
    out = second((images + 1e-4).clamp(0, 1))
    torch.testing.assert_close(out[:3], expected, rtol=0, atol=0)
    torch.testing.assert_close(out, black_box(Scores())(images), rtol=0, atol=1e-6)
    assert backend.sent == [2]  # only the two images no earlier run asked
    assert second.counter.snapshot()["queries"] == 2 and second.counter.snapshot()["replayed"] == 3
    second(images[:3])
    assert backend.sent == [2] and second.counter.replayed == 6 and second.counter.calls == 1


def test_another_card_or_model_refuses_the_journal_and_a_white_box_opens_none(tmp_path: Path):
    first = black_box(Scores())
    first.open_journal(tmp_path / "queries.journal")
    first.journal.close()  # type: ignore[union-attr]
    other = black_box(Scores())
    other.info = replace(other.info, card=replace(other.info.card, channel_order="BGR"))
    with pytest.raises(RunError, match="another model"):
        other.open_journal(tmp_path / "queries.journal")
    white = black_box(Scores())
    white.info = replace(white.info, offers=("white-box", *white.info.offers))
    assert white.open_journal(tmp_path / "white.journal") is None and not (tmp_path / "white.journal").exists()
