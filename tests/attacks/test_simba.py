"""SimBA-DCT: budget on the 8-bit grid, the DCT directions and their order, exact query accounting, early stop,
seeding, and success against Square at the same queries."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dermadv.attacks.registry import create_attack
from dermadv.attacks.simba import SimBA, coefficient_orders, dct_matrix, frequency_bands
from dermadv.attacks.square import Square
from dermadv.errors import ConfigError

EPS = 8 / 255
TARGET = 2


class TinyConv(nn.Module):
    """A seeded random convolutional classifier of 5 classes on 16×16 images, steep enough to be fooled at 8/255."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(8 * 16, 5)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - 0.5) * 10)


class Bright(nn.Module):
    """``model``, except that images brighter than 0.7 on average score class ``TARGET`` far above the rest."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)
        bright = (images.mean((1, 2, 3)) > 0.7).float()
        return logits + 100 * bright[:, None] * nn.functional.one_hot(torch.tensor(TARGET), logits.shape[1])


class Counting(nn.Module):
    """Counts, per clean image, the rows the model is sent (a row is the clean image within ``EPS`` of it) and
    those of them it classifies as ``TARGET``."""

    def __init__(self, model: nn.Module, clean: torch.Tensor) -> None:
        super().__init__()
        self.model, self.clean = model, clean
        self.rows = torch.zeros(len(clean), dtype=torch.long)
        self.hits = torch.zeros(len(clean), dtype=torch.long)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        distance = (images[:, None] - self.clean[None]).abs().flatten(2).amax(2)  # rows × clean images
        near = distance <= EPS + 1e-6
        assert bool((near.sum(1) == 1).all()), "every row sent must be within eps of exactly one clean image"
        logits = self.model(images)
        self.rows += near.long().sum(0)
        self.hits += near[logits.argmax(1) == TARGET].long().sum(0)
        return logits


class Scripted(nn.Module):
    """Records every batch it is sent; class 0 always wins. ``improving``: the target's logit grows with every row
    ever sent (each proposal improves), else it is constant (none does)."""

    def __init__(self, *, improving: bool) -> None:
        super().__init__()
        self.improving, self.sent, self.calls = improving, 0, []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls.append(images.clone())
        logits = torch.zeros(len(images), 5)
        logits[:, 0] = 100.0
        if self.improving:
            logits[:, TARGET] = 1e-3 * (self.sent + torch.arange(len(images)))
        self.sent += len(images)
        return logits


def grey_images(n: int, *, seed: int = 1, spread: float = 0.06) -> torch.Tensor:
    """Noisy grey images on the 8-bit grid (the random convolution's scores are close, so attacks can work)."""
    g = torch.Generator().manual_seed(seed)
    return ((0.5 + spread * torch.randn(n, 3, 16, 16, generator=g)).clamp(0, 1) * 255).round() / 255


@pytest.mark.parametrize("eps", ["8/255", 0.03, "1/255"])
@pytest.mark.parametrize("target", [TARGET, None])
@pytest.mark.parametrize("order", ["strided", "random"])
def test_budget_holds_on_the_8bit_grid(eps: float | str, target: int | None, order: str) -> None:
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (8, 3, 16, 16), generator=g).float() / 255
    images[:, :, :4] = 0.0  # saturated pixels: the search must not step outside [0, 1]
    images[:, :, -4:] = 1.0
    labels = torch.arange(8) % 5
    attack = SimBA(eps, queries=60, order=order)  # type: ignore[arg-type]
    adv = attack(TinyConv(), images, labels=labels, target=target).adv_images

    steps = int(attack.eps * 255 + 1e-6)
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv * 255 - (adv * 255).round()).abs().max() < 1e-4, "every value must lie on the 8-bit grid"
    assert ((adv * 255).round() - images * 255).abs().max() <= steps
    assert ((adv * 255).round() != images * 255).any(), "the attack must have moved the images"


def test_directions_are_scipys_inverse_dct() -> None:
    fft = pytest.importorskip("scipy.fft")
    rows, cols = dct_matrix(6), dct_matrix(10)
    for u, v in [(0, 0), (1, 0), (2, 7), (5, 9)]:
        unit = torch.zeros(6, 10, dtype=torch.float64)
        unit[u, v] = 1
        expected = torch.from_numpy(fft.idctn(unit.numpy(), norm="ortho")).float()
        assert torch.allclose(rows[u][:, None] * cols[v][None, :], expected, atol=1e-6)


def test_orders_take_the_low_frequency_block_first_without_replacement() -> None:
    bands = frequency_bands(32, 32, (8, 8), "strided")
    u, v = torch.arange(32)[:, None], torch.arange(32)[None, :]
    largest = torch.maximum(u, v)
    # the authors' block_order(32, 3, initial_size=8, stride=2): the block, then L-shaped bands 2 wide
    assert torch.equal(bands, torch.where(largest < 8, 0, 1 + (largest - 8) // 2))
    assert torch.equal(frequency_bands(32, 32, (8, 8), "random"), (largest >= 8).long())

    orders = coefficient_orders(4, 3, bands, 3 * 32 * 32, torch.Generator().manual_seed(0))
    block = 3 * 8 * 8
    for order in orders:
        assert torch.equal(order.sort().values, torch.arange(3 * 32 * 32)), "every coefficient exactly once"
        band_of = bands.flatten().repeat(3)[order]
        assert bool((band_of[:block] == 0).all()) and bool((band_of.diff() >= 0).all())
    assert not torch.equal(orders[0], orders[1]), "each image walks its own order"


def test_an_image_is_never_queried_after_it_succeeds() -> None:
    images = grey_images(12)
    images[:3] = (images[:3] + 90 / 255).clamp(0, 1)  # bright: already the target, by far, from the first query on
    counting = Counting(Bright(TinyConv()), images)
    queries = 100
    result = SimBA(EPS, queries=queries, step=1.0)(counting, images, target=TARGET)

    spent = result.queries
    assert spent is not None
    assert torch.equal(counting.rows, spent + 1), "each image's rows: its queries, then the base class's scoring"
    assert torch.equal(spent[:3], torch.ones(3, dtype=torch.long))
    # a fooled image was sent once fooled, as its last query, then once more by the base class to score it
    assert torch.equal(counting.hits, 2 * result.success.long())
    assert int(result.success[3:].sum()) >= 3, "some grey images must be fooled for the check above to bite"
    assert bool(result.success[spent < queries].all()), "the search stops early only on success"
    assert bool((spent[~result.success] == queries).all()), "an unfooled image spends the whole budget"


@pytest.mark.parametrize("queries", [9, 10])
def test_a_proposal_that_fails_costs_two_queries(queries: int) -> None:
    images = grey_images(4)
    model = Scripted(improving=False)
    result = SimBA(EPS, queries=queries)(model, images, target=TARGET)

    assert result.queries is not None and torch.equal(result.queries, torch.full((4,), queries))
    assert len(model.calls) == queries + 1, "the start, +step and -step of each proposal (+step alone last if odd)"
    assert all(len(call) == 4 for call in model.calls)
    for plus, minus in zip(model.calls[1:-1:2], model.calls[2:-1:2], strict=False):
        assert ((plus + minus - 2 * images) * 255).abs().max() <= 1 + 1e-4, "-step mirrors +step about the image"
        assert not torch.equal(plus, minus)
    assert torch.equal(result.adv_images, images), "no proposal improved, so none was kept"


def test_a_proposal_that_improves_costs_one_query() -> None:
    images = grey_images(4)
    model = Scripted(improving=True)
    queries = 12
    result = SimBA(EPS, queries=queries)(model, images, target=TARGET)

    assert result.queries is not None and torch.equal(result.queries, torch.full((4,), queries))
    assert len(model.calls) == queries + 1, "one +step per proposal, never a -step"
    for before, after in zip(model.calls[:-2], model.calls[1:-1], strict=True):  # the last: the base's scoring
        assert bool((before != after).flatten(1).any(1).all()), "each call moves every image on"
    assert torch.equal(model.calls[-2], result.adv_images), "the last proposal sent was kept"


def test_seeded_runs_repeat_and_seeds_differ() -> None:
    model, images = TinyConv(), grey_images(8)
    runs = [SimBA(EPS, queries=40, seed=seed)(model, images, target=TARGET) for seed in (7, 7, 8)]
    assert torch.equal(runs[0].adv_images, runs[1].adv_images)
    assert torch.equal(runs[0].queries, runs[1].queries)
    assert not torch.equal(runs[0].adv_images, runs[2].adv_images)


def test_seed_none_leaves_the_global_random_stream_alone() -> None:
    model = TinyConv()  # seeds torch's global generator itself
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    SimBA(EPS, queries=20, seed=None)(model, grey_images(4), target=TARGET)
    assert torch.equal(torch.rand(3), expected)


def test_moves_most_images_to_the_target_within_budget() -> None:
    model, images = TinyConv(), grey_images(96, seed=3)
    assert float((model(images).argmax(1) == TARGET).float().mean()) == 0
    result = SimBA(EPS, queries=100)(model, images, target=TARGET)
    assert ((result.adv_images - images).abs().max() * 255).round() <= 8
    rate = float(result.success.float().mean())
    square = float(Square(EPS, queries=100)(model, images, target=TARGET).success.float().mean())
    # this random convolution pools to 4×4, so it reads low frequencies: SimBA-DCT's ground (measured 1.00 vs 0.65)
    assert rate >= 0.9 and rate >= square, f"simba {rate:.2f}, square {square:.2f}"


def test_registry_and_declared_needs() -> None:
    attack = create_attack("simba", eps="4/255", queries=100, order="random")
    assert isinstance(attack, SimBA) and attack.eps == pytest.approx(4 / 255) and attack.queries == 100
    assert repr(attack).startswith("SimBA(") and "order='random'" in repr(attack) and "step=None" in repr(attack)
    assert SimBA.needs == "scores"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"norm": "l2"}, "'linf'"),
        ({"eps": 0.5 / 255}, "1/255"),
        ({"queries": 0}, "queries"),
        ({"step": 0.0}, "step"),
        ({"freq_dims": 0}, "freq_dims"),
        ({"order": "diag"}, "order"),
        ({"loss": "dlr"}, "loss"),
    ],
)
def test_bad_hyperparameters_say_what_is_wrong(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SimBA(**kwargs)  # type: ignore[arg-type]


def test_a_step_too_small_to_move_a_value_is_refused() -> None:
    with pytest.raises(ConfigError, match="half an 8-bit level"):
        SimBA(EPS, queries=5, step=1e-3)(TinyConv(), grey_images(2), target=TARGET)
