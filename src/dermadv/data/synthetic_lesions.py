"""Drawing for the synthetic set: lesions as optical-density layers, and their photographs.

A lesion is painted as optical density per RGB channel (melanin brown, tan, black, deep blue-grey,
haemoglobin red and purple) plus a white overlay (scale, scar, veil, milia), all in image coordinates.
A photograph composes it over skin (``image = skin * exp(-density)``), then adds hair, light and the
dark circular field of a contact dermatoscope. Everything is vectorised numpy over one image.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

# Optical density per unit of pigment, per RGB channel (image = skin * exp(-density * spectrum)).
_BROWN = np.array([0.47, 0.72, 1.00], np.float32)
_TAN = np.array([0.28, 0.55, 1.05], np.float32)
_BLACK = np.array([1.50, 1.60, 1.70], np.float32)
_BLUE_GREY = np.array([0.67, 0.40, 0.15], np.float32)
_RED = np.array([0.16, 1.05, 0.82], np.float32)
_PURPLE = np.array([0.70, 1.30, 0.62], np.float32)

_ANGLES = 256  # resolution of the radius-per-angle tables


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * x)


@lru_cache(maxsize=16)
def _noise_kernel(n: int, cell: int) -> np.ndarray:
    """Rows of Gaussian weights from ``n`` pixels to grid nodes ``cell`` apart, unit L2 norm per row."""
    nodes = np.arange(-2, n // cell + 3, dtype=np.float32) * cell
    d = np.arange(n, dtype=np.float32)[:, None] - nodes[None, :]
    k = np.exp(-0.5 * (d / (0.8 * cell)) ** 2)
    return (k / np.sqrt((k**2).sum(axis=1, keepdims=True))).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Gaussian noise of unit variance smoothed over about ``cell`` pixels.

    Coarse noise is two small matrix products; fine noise (where those get expensive) is a random
    crop of a fixed texture, flipped and signed at random.
    """
    c = max(1, int(round(cell)))
    if c <= _FINE:
        tile = _fine_textures(h, w)[c - 1]
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        sign = np.float32(1 if rng.random() < 0.5 else -1)
        return tile[y : y + h, x : x + w] * sign
    ky, kx = _noise_kernel(h, c), _noise_kernel(w, c)
    grid = rng.standard_normal((ky.shape[1], kx.shape[1]), dtype=np.float32)
    return ky @ grid @ kx.T


_FINE = 4  # cells up to this many pixels come from _fine_textures


@lru_cache(maxsize=4)
def _fine_textures(h: int, w: int) -> tuple[np.ndarray, ...]:
    """Fine noise tiles of twice the image size (white noise for cell 1), shared by all images."""
    rng = np.random.default_rng(20180810)
    tiles = []
    for c in range(1, _FINE + 1):
        if c == 1:
            tiles.append(rng.standard_normal((2 * h, 2 * w), dtype=np.float32))
        else:
            ky, kx = _noise_kernel(2 * h, c), _noise_kernel(2 * w, c)
            tiles.append(ky @ rng.standard_normal((ky.shape[1], kx.shape[1]), dtype=np.float32) @ kx.T)
    return tuple(tiles)


def _fourier_table(rng: np.random.Generator, amplitude: float, *, k_max: int = 9, decay: float = 0.9) -> np.ndarray:
    """A random smooth periodic function of angle, zero mean, sampled at ``_ANGLES`` points."""
    theta = np.linspace(-np.pi, np.pi, _ANGLES, endpoint=False, dtype=np.float32)
    k = np.arange(2, k_max + 1, dtype=np.float32)
    coef = rng.standard_normal(k.size).astype(np.float32) * amplitude / k**decay
    phase = rng.uniform(0, 2 * np.pi, k.size).astype(np.float32)
    return (coef[:, None] * np.cos(k[:, None] * theta[None, :] + phase[:, None])).sum(axis=0)


@lru_cache(maxsize=4)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy, xx


class Lesion:
    """Polar geometry of one lesion: centre, radius per angle, and the layers drawn so far."""

    def __init__(self, rng: np.random.Generator, h: int, w: int, *, size: float, irregular: float, ellipse: float):
        self.h, self.w = h, w
        self.cy = h / 2 + rng.normal(0, 0.05 * h)
        self.cx = w / 2 + rng.normal(0, 0.05 * w)
        self.r0 = size * min(h, w) / 2
        theta = np.linspace(-np.pi, np.pi, _ANGLES, endpoint=False, dtype=np.float32)
        stretch = ellipse * np.cos(2 * (theta - rng.uniform(0, np.pi)))
        self.radius = self.r0 * np.clip(1 + stretch + _fourier_table(rng, irregular), 0.35, 2.0)
        yy, xx = _grid(h, w)
        self.dy, self.dx = yy - self.cy, xx - self.cx
        self.r = np.hypot(self.dy, self.dx)
        angle = np.arctan2(self.dy, self.dx)
        self.index = ((angle + np.pi) * (_ANGLES / (2 * np.pi))).astype(np.intp) % _ANGLES
        self.rel = self.r / self.radius[self.index]
        reach = float(self.radius.max()) * 1.15 + 12 * min(h, w) / 150
        self.box = (
            slice(max(0, int(self.cy - reach)), max(0, min(h, int(self.cy + reach) + 1))),
            slice(max(0, int(self.cx - reach)), max(0, min(w, int(self.cx + reach) + 1))),
        )
        self.density = np.zeros((3, h, w), np.float32)  # planar: broadcasting over channels stays cheap
        self.white = np.zeros((h, w), np.float32)

    def mask(self, border: float | np.ndarray, scale: float = 1.0) -> np.ndarray:
        """Soft inside-ness, 1 inside and 0 outside; ``border`` is the edge width in pixels (or a table)."""
        bw = border[self.index] if isinstance(border, np.ndarray) else border
        return _sigmoid((scale * self.radius[self.index] - self.r) / bw)

    def add(self, amount: np.ndarray | float, spectrum: np.ndarray) -> None:
        self.density += np.asarray(amount, np.float32) * spectrum[:, None, None]

    def add_white(self, amount: np.ndarray) -> None:
        self.white = 1 - (1 - self.white) * (1 - np.clip(amount, 0, 1))

    def points(self, rng: np.random.Generator, n: int, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
        """``n`` random (y, x) points at relative radius in [lo, hi]."""
        angle = rng.uniform(-np.pi, np.pi, n)
        rel = np.sqrt(rng.uniform(lo**2, hi**2, n))
        idx = ((angle + np.pi) * (_ANGLES / (2 * np.pi))).astype(np.intp) % _ANGLES
        rad = rel * self.radius[idx]
        return np.stack([self.cy + rad * np.sin(angle), self.cx + rad * np.cos(angle)], axis=1)

    def noise(self, rng: np.random.Generator, cell: float) -> np.ndarray:
        return _smooth_noise(rng, self.h, self.w, cell)

    def dots(self, points: np.ndarray, amounts: np.ndarray | float, sigma: float) -> np.ndarray:
        """Gaussian dots of peak about ``amounts`` at ``points``."""
        imp = np.zeros((self.h, self.w), np.float32)
        yi, xi = np.round(points[:, 0]).astype(int), np.round(points[:, 1]).astype(int)
        ok = (yi >= 0) & (yi < self.h) & (xi >= 0) & (xi < self.w)
        amt = np.broadcast_to(np.asarray(amounts, np.float32), (len(points),))
        np.add.at(imp, (yi[ok], xi[ok]), amt[ok])
        return ndimage.gaussian_filter(imp, sigma, truncate=3.0) * np.float32(2 * np.pi * sigma**2)

    def network(self, rng: np.random.Generator, period: float, warp: float) -> np.ndarray:
        """A pigment network in [0, 1] (1 on the thin lines of three crossing families), bent by ``warp`` radians."""
        k = 2 * np.pi / period
        a0 = rng.uniform(0, np.pi)
        dy, dx = self.dy[self.box], self.dx[self.box]  # the network only matters under the lesion
        part = np.zeros(dy.shape, np.float32)
        for a in (a0, a0 + np.pi / 3, a0 + 2 * np.pi / 3):
            bent = warp * _smooth_noise(rng, dy.shape[0], dy.shape[1], 3 * period)
            line = 0.5 + 0.5 * np.cos(k * (dx * np.cos(a) + dy * np.sin(a)) + bent)
            line *= line
            np.maximum(part, line * line, out=part)
        net = np.zeros((self.h, self.w), np.float32)
        net[self.box] = part
        return net


def _polylines(h: int, w: int, lines: list[list[tuple[float, float]]], widths: list[int]) -> np.ndarray:
    """Anti-aliased-enough thin lines (x, y points), drawn with Pillow and lightly blurred."""
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    for pts, width in zip(lines, widths, strict=True):
        draw.line(pts, fill=255, width=width, joint="curve")
    return ndimage.gaussian_filter(np.asarray(img, np.float32) / 255, 0.6)


def _vessel_tree(
    rng: np.random.Generator, les: Lesion, n_trees: int, px: float
) -> tuple[list[list[tuple[float, float]]], list[int]]:
    """Arborising vessels: branching random walks starting inside the lesion."""
    lines: list[list[tuple[float, float]]] = []
    widths: list[int] = []
    stack = [(float(p[1]), float(p[0]), rng.uniform(0, 2 * np.pi), 2) for p in les.points(rng, n_trees, 0.0, 0.7)]
    while stack:
        x, y, a, width = stack.pop()
        pts = [(x, y)]
        for _ in range(int(rng.integers(3, 7))):
            a += rng.normal(0, 0.35)
            step = rng.uniform(2.5, 5.0) * px
            x, y = x + step * np.cos(a), y + step * np.sin(a)
            pts.append((x, y))
        lines.append(pts)
        widths.append(width)
        if len(lines) < 6 * n_trees:
            for turn in (-1, 1):
                if rng.random() < 0.7:
                    stack.append((x, y, a + turn * rng.uniform(0.4, 1.0), max(1, width - 1)))
    return lines, widths


# ---------------------------------------------------------------------------------------------- classes
# Each drawer samples a sub-type, builds a Lesion and paints its layers. Sizes are fractions of half the
# image's shorter side; borders are in pixels of a 150×200 image and scale with it.


def _draw_nv(rng: np.random.Generator, h: int, w: int, px: float, kind: str | None = None) -> Lesion:
    kind = kind or str(rng.choice(["typical", "dysplastic", "light", "blue"], p=[0.72, 0.16, 0.08, 0.04]))
    irregular = {"typical": 0.05, "dysplastic": 0.12, "light": 0.09, "blue": 0.04}[kind]
    les = Lesion(rng, h, w, size=rng.lognormal(np.log(0.36), 0.28), irregular=irregular, ellipse=rng.uniform(0, 0.15))
    border = px * (rng.uniform(0.8, 2.2) if kind in ("typical", "blue") else rng.uniform(1.8, 4.5))
    m = les.mask(border)
    if kind == "blue":
        les.add(m * rng.uniform(0.9, 1.6), _BLUE_GREY)
        les.add(m * rng.uniform(0.1, 0.4), _BROWN)
        return les
    dens = rng.uniform(0.25, 0.55) if kind == "light" else rng.uniform(0.55, 1.3)
    centre = 1 + rng.uniform(0.0, 0.6) * np.clip(1 - les.rel**2, 0, 1)
    patchy = 1 + (0.3 if kind == "dysplastic" else 0.08) * les.noise(rng, 14 * px)
    les.add(m * dens * centre * patchy, _TAN if kind == "light" else _BROWN)
    texture = rng.choice(["network", "globules", "plain"], p=[0.55, 0.25, 0.2])
    if texture == "network":
        net = les.network(rng, rng.uniform(4.0, 6.5) * px, rng.uniform(1.0, 2.0) if kind == "typical" else 3.0)
        les.add(m * net * dens * rng.uniform(0.3, 0.6), _BROWN)
    elif texture == "globules":
        pts = les.points(rng, int(rng.integers(15, 40)), 0.0, 0.9)
        les.add(les.dots(pts, rng.uniform(0.4, 0.8), 1.4 * px) * m, _BROWN)
    if kind == "dysplastic":
        spot = les.dots(les.points(rng, 1, 0.0, 0.5), 1.0, les.r0 * rng.uniform(0.2, 0.4))
        les.add(spot * m * rng.uniform(0.3, 0.8), _BROWN)
    return les


def _draw_mel(rng: np.random.Generator, h: int, w: int, px: float, kind: str | None = None) -> Lesion:
    kind = kind or str(rng.choice(["invasive", "in_situ", "nodular", "amelanotic"], p=[0.55, 0.3, 0.1, 0.05]))
    size = rng.lognormal(np.log(0.55 if kind == "invasive" else 0.42), 0.25)
    irregular = rng.uniform(0.14, 0.28) if kind == "invasive" else rng.uniform(0.07, 0.15)
    les = Lesion(rng, h, w, size=size, irregular=irregular, ellipse=rng.uniform(0, 0.25))
    border = px * rng.uniform(1.5, 4.0) * np.exp(_fourier_table(rng, 0.7, k_max=5))
    m = les.mask(border)
    if kind == "nodular":
        les.add(m * rng.uniform(1.0, 1.8), _BLUE_GREY)
        les.add(m * rng.uniform(0.5, 1.2) * (1 + 0.3 * les.noise(rng, 10 * px)), _BROWN)
        les.add(m * rng.uniform(0.0, 0.6) * np.clip(les.noise(rng, 12 * px), 0, None), _BLACK)
        return les
    if kind == "amelanotic":
        les.add(m * rng.uniform(0.3, 0.7) * (1 + 0.4 * les.noise(rng, 10 * px)), _RED)
        les.add(m * rng.uniform(0.1, 0.35), _BROWN)
        les.add_white(m * 0.3 * np.clip(les.noise(rng, 8 * px), 0, None))
        return les
    tones = les.noise(rng, rng.uniform(8, 18) * px)
    dens = rng.uniform(0.5, 1.2) * (1 + (0.45 if kind == "invasive" else 0.25) * tones)
    les.add(m * np.clip(dens, 0.1, None), _BROWN)
    les.add(m * np.clip(tones - rng.uniform(0.6, 1.4), 0, None) * rng.uniform(0.3, 0.9), _BLACK)
    net = les.network(rng, rng.uniform(4.0, 7.5) * px, rng.uniform(2.5, 5.0))
    les.add(m * net * np.clip(0.5 + 0.5 * les.noise(rng, 10 * px), 0, 1) * rng.uniform(0.3, 0.8), _BROWN)
    n_dots = int(rng.integers(5, 30))
    pts = les.points(rng, n_dots, 0.4, 1.05)
    les.add(les.dots(pts, rng.uniform(0.5, 1.2, n_dots), rng.uniform(0.9, 1.8) * px), _BLACK)
    if rng.random() < (0.65 if kind == "invasive" else 0.25):  # blue-white veil
        veil = les.dots(les.points(rng, 1, 0.0, 0.6), 1.0, les.r0 * rng.uniform(0.25, 0.5)) * m
        les.add(veil * rng.uniform(0.5, 1.2), _BLUE_GREY)
        les.add_white(veil * rng.uniform(0.15, 0.4))
    if rng.random() < 0.35:  # streaks / pseudopods at the periphery
        angles = rng.uniform(-np.pi, np.pi, int(rng.integers(6, 20)))
        idx = ((angles + np.pi) * (_ANGLES / (2 * np.pi))).astype(np.intp) % _ANGLES
        rad = les.radius[idx]
        lines = [
            [
                (les.cx + 0.75 * r * np.cos(a), les.cy + 0.75 * r * np.sin(a)),
                (les.cx + rng.uniform(1.05, 1.3) * r * np.cos(a), les.cy + rng.uniform(1.05, 1.3) * r * np.sin(a)),
            ]
            for a, r in zip(angles, rad, strict=True)
        ]
        les.add(_polylines(h, w, lines, [max(1, round(px * 1.5))] * len(lines)) * rng.uniform(0.6, 1.2), _BROWN)
    if rng.random() < 0.3:  # regression: white scar with grey peppering
        reg = les.dots(les.points(rng, 1, 0.2, 0.7), 1.0, les.r0 * rng.uniform(0.2, 0.35)) * m
        les.add_white(reg * rng.uniform(0.3, 0.55))
        pep = les.dots(les.points(rng, 40, 0.0, 1.0), 0.5, 0.8 * px)
        les.add(reg * pep, _BLUE_GREY)
    if rng.random() < 0.25:
        les.add(m * rng.uniform(0.1, 0.3), _RED)
    return les


def _draw_bkl(rng: np.random.Generator, h: int, w: int, px: float, kind: str | None = None) -> Lesion:
    kind = kind or str(rng.choice(["seborrheic", "lentigo", "lichenoid"], p=[0.55, 0.3, 0.15]))
    irregular = rng.uniform(0.08, 0.2)
    les = Lesion(rng, h, w, size=rng.lognormal(np.log(0.48), 0.3), irregular=irregular, ellipse=rng.uniform(0, 0.3))
    if kind == "lentigo":
        m = les.mask(px * rng.uniform(2.5, 6.0)) * np.clip(1 + 0.5 * les.noise(rng, 5 * px), 0, 1)
        les.add(m * rng.uniform(0.25, 0.7) * (1 + 0.2 * les.noise(rng, 10 * px)), _TAN)
        les.add(m * les.network(rng, rng.uniform(5, 8) * px, 1.0) * rng.uniform(0.1, 0.3), _TAN)
        return les
    m = les.mask(px * rng.uniform(0.9, 2.5))
    if kind == "lichenoid":
        les.add(m * rng.uniform(0.15, 0.35), _RED)
        les.add(m * rng.uniform(0.1, 0.35), _TAN)
        pep = les.dots(les.points(rng, int(rng.integers(40, 120))), rng.uniform(0.4, 0.9), 0.9 * px)
        les.add(pep * m, _BLUE_GREY)
        return les
    les.add(m * rng.uniform(0.4, 1.0) * (1 + 0.25 * les.noise(rng, 6 * px)), _TAN)
    ridges = np.abs(np.sin(np.pi * 2.5 * les.noise(rng, rng.uniform(7, 12) * px)))
    les.add(m * np.clip(0.35 - ridges, 0, None) * rng.uniform(0.8, 2.0), _BROWN)
    n = int(rng.integers(3, 25))  # milia-like cysts
    les.add_white(les.dots(les.points(rng, n, 0.0, 0.9), rng.uniform(0.5, 0.9), rng.uniform(1.0, 1.8) * px) * m)
    n = int(rng.integers(0, 15))  # comedo-like openings
    les.add(les.dots(les.points(rng, n, 0.0, 0.9), rng.uniform(0.6, 1.2), 1.1 * px) * m, _BROWN)
    les.add_white(m * 0.12 * np.clip(les.noise(rng, 3 * px), 0, None))  # waxy sheen
    return les


def _draw_bcc(rng: np.random.Generator, h: int, w: int, px: float, kind: str | None = None) -> Lesion:
    les = Lesion(rng, h, w, size=rng.lognormal(np.log(0.4), 0.3), irregular=rng.uniform(0.06, 0.18), ellipse=0.15)
    m = les.mask(px * rng.uniform(1.5, 4.0))
    les.add(m * rng.uniform(0.15, 0.4) * (1 + 0.3 * les.noise(rng, 10 * px)), _RED)
    les.add_white(m * rng.uniform(0.05, 0.3) * np.clip(les.noise(rng, 9 * px), 0, None))  # shiny white areas
    if rng.random() < 0.85:
        lines, widths = _vessel_tree(rng, les, int(rng.integers(2, 6)), px)
        widths = [max(1, round(wd * px)) for wd in widths]
        les.add(_polylines(h, w, lines, widths) * m * rng.uniform(0.8, 1.6), _RED)
    if rng.random() < 0.45:  # pigmented: blue-grey ovoid nests
        n = int(rng.integers(2, 10))
        nests = les.dots(les.points(rng, n, 0.0, 0.85), rng.uniform(0.6, 1.3, n), rng.uniform(2.0, 4.0) * px)
        les.add(nests * m, _BLUE_GREY)
        les.add(nests * m * 0.4, _BROWN)
    if rng.random() < 0.3:  # ulceration / crust
        crust = les.dots(les.points(rng, 1, 0.0, 0.5), 1.0, les.r0 * rng.uniform(0.12, 0.25))
        les.add(crust * rng.uniform(0.6, 1.2), _RED)
        les.add(crust * rng.uniform(0.3, 0.8), _BROWN)
    return les


def _draw_akiec(rng: np.random.Generator, h: int, w: int, px: float, kind: str | None = None) -> Lesion:
    size = rng.lognormal(np.log(0.5), 0.3)
    les = Lesion(rng, h, w, size=size, irregular=rng.uniform(0.1, 0.22), ellipse=rng.uniform(0, 0.3))
    m = les.mask(px * rng.uniform(3.5, 9.0)) * np.clip(0.7 + 0.4 * les.noise(rng, 10 * px), 0, 1)
    les.add(m * rng.uniform(0.25, 0.6), _RED)
    scale = np.clip(les.noise(rng, rng.uniform(1.5, 3.0) * px) - 0.3, 0, None)
    les.add_white(m * scale * rng.uniform(0.2, 0.5))
    if rng.random() < 0.5:  # strawberry pattern: white follicles on a red pseudo-network
        pts = les.points(rng, int(rng.integers(15, 50)), 0.0, 0.9)
        les.add_white(les.dots(pts, 0.6, 1.3 * px) * m)
    if rng.random() < 0.5:  # dotted vessels
        pts = les.points(rng, int(rng.integers(10, 40)), 0.0, 0.9)
        les.add(les.dots(pts, 0.7, 0.9 * px) * m, _RED)
    if rng.random() < 0.25:  # pigmented actinic keratosis
        les.add(m * rng.uniform(0.25, 0.6) * np.clip(1 + 0.6 * les.noise(rng, 8 * px), 0, None), _TAN)
    return les


def _draw_df(rng: np.random.Generator, h: int, w: int, px: float, kind: str | None = None) -> Lesion:
    les = Lesion(rng, h, w, size=rng.lognormal(np.log(0.26), 0.25), irregular=rng.uniform(0.03, 0.1), ellipse=0.2)
    m = les.mask(px * rng.uniform(2.5, 6.0))
    brownish = rng.random() < 0.2
    ring = np.clip(les.rel - rng.uniform(0.2, 0.5), 0, None) if not brownish else 1.0
    les.add(m * rng.uniform(0.4, 0.9) * ring, _BROWN if brownish else _TAN)
    net = les.network(rng, rng.uniform(3.5, 5.0) * px, 0.8)
    les.add(m * net * rng.uniform(0.2, 0.5), _TAN)
    les.add(m * rng.uniform(0.1, 0.3), _RED)
    scar = les.mask(px * 2.5, scale=rng.uniform(0.3, 0.6)) * (1 + 0.2 * les.noise(rng, 4 * px))
    les.add_white(scar * (rng.uniform(0.15, 0.35) if brownish else rng.uniform(0.35, 0.7)))
    return les


def _draw_vasc(rng: np.random.Generator, h: int, w: int, px: float, kind: str | None = None) -> Lesion:
    les = Lesion(rng, h, w, size=rng.lognormal(np.log(0.3), 0.3), irregular=rng.uniform(0.04, 0.12), ellipse=0.15)
    m = les.mask(px * rng.uniform(0.8, 1.8))
    les.add(m * rng.uniform(0.3, 0.6), _RED)
    les.add_white(m * rng.uniform(0.05, 0.2))  # whitish septa between the lagoons
    colour = rng.choice(["red", "purple", "dark"], p=[0.5, 0.35, 0.15])
    spectrum = {"red": _RED, "purple": _PURPLE, "dark": _BLUE_GREY}[colour]
    n = int(rng.integers(3, 12))
    lagoon_r = les.r0 * rng.uniform(0.18, 0.4)
    lagoons = np.zeros((h, w), np.float32)
    yy, xx = _grid(h, w)
    for cy, cx in les.points(rng, n, 0.0, 0.75):
        d = np.hypot(yy - cy, xx - cx) / (lagoon_r * rng.uniform(0.7, 1.3))
        lagoons = np.maximum(lagoons, _sigmoid((1 - d) * 6))
    dens = rng.uniform(0.7, 1.4) * (2.0 if colour == "dark" else 1.0)
    les.add(lagoons * m * dens, spectrum)
    les.add(lagoons * m * rng.uniform(0.3, 0.8), _RED)
    return les


_DRAWERS: dict[str, Callable[..., Lesion]] = {
    "akiec": _draw_akiec,
    "bcc": _draw_bcc,
    "bkl": _draw_bkl,
    "df": _draw_df,
    "mel": _draw_mel,
    "nv": _draw_nv,
    "vasc": _draw_vasc,
}


#: Look-alikes: the share of a class drawn like another class's sub-type (clinically ambiguous lesions).
#: They set the ceiling of what a classifier can reach (about 94%), so the set is learnable but not trivial.
_LOOKALIKES: dict[str, list[tuple[str, str | None, float]]] = {
    "akiec": [("bcc", None, 0.05), ("bkl", "lichenoid", 0.04)],
    "bcc": [("akiec", None, 0.07)],
    "bkl": [("nv", "light", 0.05), ("mel", "in_situ", 0.03)],
    "df": [("nv", "typical", 0.08)],
    "mel": [("nv", "dysplastic", 0.10)],
    "nv": [("mel", "in_situ", 0.04)],
    "vasc": [("mel", "nodular", 0.05)],
}


def draw_lesion(rng: np.random.Generator, dx: str, h: int, w: int, px: float) -> Lesion:
    """Draw one lesion of class ``dx`` (sometimes as a look-alike of another class)."""
    u = rng.random()
    for other, kind, share in _LOOKALIKES[dx]:
        if u < share:
            return _DRAWERS[other](rng, h, w, px, kind)
        u -= share
    return _DRAWERS[dx](rng, h, w, px)


# ---------------------------------------------------------------------------------------------- photographs


def sample_skin(rng: np.random.Generator) -> np.ndarray:
    light, tan = np.array([0.93, 0.79, 0.77], np.float32), np.array([0.84, 0.60, 0.47], np.float32)
    t = rng.beta(1.5, 2.5)
    return (light * (1 - t) + tan * t + rng.normal(0, 0.015, 3)).astype(np.float32)


def another_view(
    rng: np.random.Generator, density: np.ndarray, white: np.ndarray, px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Another photograph of the same lesion: flips, a small rotation, zoom and shift."""
    if rng.random() < 0.5:
        density, white = density[:, :, ::-1], white[:, ::-1]
    if rng.random() < 0.5:
        density, white = density[:, ::-1], white[::-1]
    h, w = white.shape
    angle, zoom = rng.uniform(-0.35, 0.35), rng.uniform(0.9, 1.12)
    sy, sx = rng.normal(0, 4 * px, 2)
    c, s = np.cos(angle) / zoom, np.sin(angle) / zoom
    # Pillow maps each output (x, y) to input (c x + s y + x0, -s x + c y + y0): a rotation about the centre.
    x0 = w / 2 - c * (w / 2 + sx) - s * (h / 2 + sy)
    y0 = h / 2 - c * (h / 2 + sy) + s * (w / 2 + sx)

    def move(plane: np.ndarray) -> np.ndarray:
        img = Image.fromarray(np.ascontiguousarray(plane, np.float32))
        moved = img.transform((w, h), Image.Transform.AFFINE, (c, s, x0, -s, c, y0), Image.Resampling.BILINEAR)
        return np.asarray(moved, np.float32)

    return np.stack([move(channel) for channel in density]), move(white)


def _hairs(rng: np.random.Generator, h: int, w: int, px: float) -> np.ndarray:
    lines: list[list[tuple[float, float]]] = []
    for _ in range(int(rng.integers(1, 16))):
        x0, y0 = rng.uniform(-0.1 * w, 1.1 * w), rng.uniform(-0.1 * h, 1.1 * h)
        a, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.2) * w
        x2, y2 = x0 + length * np.cos(a), y0 + length * np.sin(a)
        bend = rng.normal(0, 0.2 * length)
        x1, y1 = (x0 + x2) / 2 - bend * np.sin(a), (y0 + y2) / 2 + bend * np.cos(a)
        t = np.linspace(0, 1, 16)
        xs = (1 - t) ** 2 * x0 + 2 * (1 - t) * t * x1 + t**2 * x2
        ys = (1 - t) ** 2 * y0 + 2 * (1 - t) * t * y1 + t**2 * y2
        lines.append(list(zip(xs.tolist(), ys.tolist(), strict=True)))
    widths = [max(1, round(px * rng.uniform(0.8, 2.2))) for _ in lines]
    return _polylines(h, w, lines, widths)


def photograph(
    rng: np.random.Generator, skin: np.ndarray, density: np.ndarray, white: np.ndarray, px: float, *, hairy: bool
) -> np.ndarray:
    """Compose skin, lesion, hair, light and dermatoscope vignetting into a uint8 H×W×3 image."""
    h, w = white.shape
    shade = 1 + 0.03 * _smooth_noise(rng, h, w, 30 * px) + 0.012 * _smooth_noise(rng, h, w, 1.5 * px)
    redness = np.clip(_smooth_noise(rng, h, w, 20 * px), 0, None) * rng.uniform(0.0, 0.07)
    img = np.exp(-(density + redness * _RED[:, None, None]))
    img *= shade * skin[:, None, None]
    white_rgb = np.array([0.95, 0.93, 0.92], np.float32) * rng.uniform(0.95, 1.03)
    img = img * (1 - white) + white * white_rgb[:, None, None]
    if hairy:
        hair = 0.85 * _hairs(rng, h, w, px)
        img = (
            img * (1 - hair) + hair * (np.array([0.12, 0.08, 0.06], np.float32) * rng.uniform(0.6, 1.5))[:, None, None]
        )
    cast = rng.uniform(0.9, 1.06) * (1 + rng.normal(0, 0.025, 3)).astype(np.float32)
    yy, xx = _grid(h, w)
    d = np.hypot(yy - h / 2 - rng.normal(0, 3 * px), xx - w / 2 - rng.normal(0, 3 * px))
    rho = rng.uniform(0.78, 1.12) * np.hypot(h, w) / 2
    field = _sigmoid((rho - d) / (rng.uniform(1.5, 6.0) * px))
    light = (1 - rng.uniform(0.05, 0.25) * (d / rho) ** 2) * field + 0.006 * _smooth_noise(rng, h, w, 1)
    img *= light * np.float32(255) * cast[:, None, None]
    img += (1 - field) * np.float32(0.04 * 255) + np.float32(0.5)
    out = np.empty((h, w, 3), np.uint8)
    np.copyto(out, np.clip(img, 0, 255, out=img).transpose(1, 2, 0), casting="unsafe")
    return out
