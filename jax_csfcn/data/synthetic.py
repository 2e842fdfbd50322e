"""Deterministic synthetic street scenes, written to disk in the Cityscapes folder layout.

The command line is ``python -m tools.synthetic_data`` (tools/synthetic_data.py).

Each scene is a one-point perspective street: sky, distant buildings at the horizon, a road
with lane dashes, sidewalks, optional terrain strips, facades (building / vegetation, sometimes
a wall or fence in front), poles with traffic lights and signs, trees, vehicles, persons and
riders, plus void pixels (unlabeled clutter, ego vehicle).  All 19 train classes appear across
a split of ~20 images.

Learnable on purpose: every class is drawn in its Cityscapes palette colour times a per-class
texture (windows, bricks, leaves, ribs...) with per-instance shading, noise and a global
brightness change, and sits where it would in a real street.  Colour and texture therefore
carry most of the class, but a per-pixel colour lookup alone is not exact.

Everything is drawn label-first with vectorised numpy masks (no per-pixel Python loops) and
is a pure function of ``(seed, split, index, size)``.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from cityscapesscripts.helpers.labels import labels as _LABELS
from cityscapesscripts.helpers.labels import name2label
from PIL import Image
from tqdm import tqdm

ID = {lab.name: lab.id for lab in _LABELS if lab.id >= 0}
UNLABELED, EGO = ID["unlabeled"], ID["ego vehicle"]

# Render colour per label id: the official palette, except the void ids, which the palette
# paints black; they get muted colours of their own (they are ignored by the loss anyway).
_COLOR = np.zeros((256, 3), np.float32)
for _lab in _LABELS:
    if _lab.id >= 0:
        _COLOR[_lab.id] = _lab.color
_COLOR[UNLABELED] = (120, 96, 64)
_COLOR[EGO] = (34, 34, 40)

# Per-class texture: (pixel noise, blotchy noise, stripe amplitude, stripe period y, x,
# cell amplitude, cell period y, x).  Periods in pixels of a 512-wide image (scaled with the
# width so a scene looks the same at any size); 0 = no component.  Cells are dark rectangles
# (windows, tiles); stripes are sinusoids (bricks, ribs, lattices, reflections).
_TEXTURE_SPEC = {
    "unlabeled": (0.20, 0.25, 0, 0, 0, 0, 0, 0),
    "ego vehicle": (0.05, 0.05, 0, 0, 0, 0, 0, 0),
    "road": (0.05, 0.10, 0, 0, 0, 0, 0, 0),
    "sidewalk": (0.04, 0.05, 0, 0, 0, 0.12, 12, 12),
    "building": (0.04, 0.08, 0, 0, 0, 0.35, 14, 10),
    "wall": (0.05, 0.05, 0.12, 5, 0, 0, 0, 0),
    "fence": (0.04, 0.00, 0.35, 7, 7, 0, 0, 0),
    "pole": (0.03, 0.00, 0, 0, 0, 0, 0, 0),
    "traffic light": (0.03, 0.00, 0, 0, 0, 0, 0, 0),
    "traffic sign": (0.03, 0.00, 0, 0, 0, 0, 0, 0),
    "vegetation": (0.22, 0.20, 0, 0, 0, 0, 0, 0),
    "terrain": (0.12, 0.15, 0.06, 0, 3, 0, 0, 0),
    "sky": (0.015, 0.08, 0, 0, 0, 0, 0, 0),
    "person": (0.08, 0.00, 0, 0, 0, 0, 0, 0),
    "rider": (0.08, 0.00, 0, 0, 0, 0, 0, 0),
    "car": (0.03, 0.00, 0.08, 9, 0, 0, 0, 0),
    "truck": (0.04, 0.00, 0.15, 0, 6, 0, 0, 0),
    "bus": (0.04, 0.00, 0, 0, 0, 0.25, 16, 12),
    "train": (0.04, 0.00, 0.20, 8, 0, 0, 0, 0),
    "motorcycle": (0.05, 0.00, 0, 0, 0, 0, 0, 0),
    "bicycle": (0.05, 0.00, 0, 0, 0, 0, 0, 0),
}
_TEXTURE = np.zeros((256, 8), np.float32)
for _name, _spec in _TEXTURE_SPEC.items():
    _TEXTURE[name2label[_name].id] = _spec
# Periods -> frequencies (cycles per 512-px pixel), so that "no component" is simply 0.
_TEXTURE[:, [3, 4, 6, 7]] = np.where(_TEXTURE[:, [3, 4, 6, 7]] > 0, 1 / np.maximum(_TEXTURE[:, [3, 4, 6, 7]], 1e-6), 0)
_TEXTURE_COLS = np.ascontiguousarray(_TEXTURE.T)  # one 256-entry table per parameter: np.take is fast

CITIES = {"train": ("alderton", "brookfield", "cedarvale"), "val": ("dunmore",), "test": ("elmstead",)}


class _Canvas:
    """Label ids and a per-pixel shade (brightness offset), painted shape by shape."""

    def __init__(self, h: int, w: int):
        self.h, self.w = h, w
        self.ids = np.full((h, w), ID["sky"], np.uint8)
        self.shade = np.zeros((h, w), np.float32)

    def _paint(self, y0, y1, x0, x1, mask, name, shade):
        ids, sh = self.ids[y0:y1, x0:x1], self.shade[y0:y1, x0:x1]  # views
        ids[mask] = ID[name] if isinstance(name, str) else name
        sh[mask] = shade

    def _box(self, x0, y0, x1, y1):
        """Integer pixel box clipped to the canvas, or None when empty."""
        x0, y0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        x1, y1 = min(int(np.ceil(x1)), self.w), min(int(np.ceil(y1)), self.h)
        return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None

    def rect(self, x0, y0, x1, y1, name, shade=0.0):
        # At least one pixel wide/high so that far poles and wheels do not vanish.
        x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
        b = self._box(round(x0), round(y0), round(x1), round(y1))
        if b:
            self._paint(b[1], b[3], b[0], b[2], np.s_[:], name, shade)

    def ellipse(self, cx, cy, rx, ry, name, shade=0.0, hole=0.0):
        """Filled ellipse; ``hole`` > 0 leaves the inner ellipse of that relative size (a ring)."""
        rx, ry = max(rx, 0.75), max(ry, 0.75)
        b = self._box(cx - rx, cy - ry, cx + rx, cy + ry)
        if not b:
            return
        yy, xx = np.ogrid[b[1] : b[3], b[0] : b[2]]
        r2 = ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2
        mask = (r2 <= 1.0) & (r2 >= hole**2)
        self._paint(b[1], b[3], b[0], b[2], mask, name, shade)

    def polygon(self, pts, name, shade=0.0):
        """Convex polygon [(x, y), ...] in either orientation: intersection of half-planes."""
        p = np.asarray(pts, np.float64)
        b = self._box(p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max())
        if not b:
            return
        yy, xx = np.ogrid[b[1] : b[3], b[0] : b[2]]
        xx, yy = xx + 0.5, yy + 0.5
        q = np.roll(p, -1, axis=0)
        orient = np.sign(np.sum(p[:, 0] * q[:, 1] - q[:, 0] * p[:, 1])) or 1.0
        mask = np.ones((b[3] - b[1], b[2] - b[0]), bool)
        for (ax, ay), (bx, by) in zip(p, q):
            mask &= orient * ((bx - ax) * (yy - ay) - (by - ay) * (xx - ax)) >= 0
        self._paint(b[1], b[3], b[0], b[2], mask, name, shade)

    def line(self, x0, y0, x1, y1, width, name, shade=0.0):
        d = np.array([y0 - y1, x1 - x0], np.float64)
        d *= max(width, 1.2) / 2 / max(np.hypot(*d), 1e-6)  # >= 1.2 px: no gaps at 1 px
        self.polygon(
            [(x0 + d[0], y0 + d[1]), (x1 + d[0], y1 + d[1]), (x1 - d[0], y1 - d[1]), (x0 - d[0], y0 - d[1])],
            name,
            shade,
        )


def _scene(rng: np.random.Generator, h: int, w: int) -> _Canvas:
    """Paint one street, far to near, into a fresh canvas."""
    cv = _Canvas(h, w)
    u = rng.uniform
    hz, vx = h * u(0.36, 0.48), w * u(0.38, 0.62)  # horizon row, vanishing point column
    rwb = w * u(0.9, 1.4)  # road width at the bottom row
    cv.shade[:] = np.linspace(-0.1, 0.2, h, dtype=np.float32)[:, None]  # sky brightens downwards

    def ppm(y):  # pixels per metre at image row y (road taken as 7 m wide)
        return max(y - hz, 0.0) / (h - hz) * rwb / 7.0

    def at(xb, t):  # point at depth t (0 = horizon, 1 = bottom row) on the line V -> (xb, h)
        return vx + t * (xb - vx), hz + t * (h - hz)

    # Distant buildings around the vanishing point.
    for _ in range(rng.integers(3, 7)):
        x = vx + w * u(-0.25, 0.25)
        cv.rect(x, hz - h * u(0.03, 0.2), x + w * u(0.03, 0.1), hz + 1, "building", u(-0.15, 0.15))

    # Ground: road triangle and, per side, sidewalk and optional terrain, all meeting at V.
    xl = vx - rwb * u(0.4, 0.6)
    edges = {}
    for side, road_x in ((-1, xl), (1, xl + rwb)):
        walk_x = road_x + side * rwb * u(0.25, 0.5)
        cv.polygon([(vx, hz), (road_x, h), (walk_x, h)], "sidewalk", u(-0.1, 0.1))
        facade_x = walk_x
        if u() < 0.6:
            facade_x = walk_x + side * rwb * u(0.2, 0.5)
            cv.polygon([(vx, hz), (walk_x, h), (facade_x, h)], "terrain", u(-0.1, 0.1))
        edges[side] = (road_x, walk_x, facade_x)
    cv.polygon([(vx, hz), (xl, h), (xl + rwb, h)], "road", u(-0.08, 0.08))
    t = 0.05
    while t < 1.0:  # dashed centre line: road label, bright paint
        t2 = t * 1.12
        (ax, ay), (bx, by) = at(xl + rwb / 2, t), at(xl + rwb / 2, min(t2, 1.0))
        cv.line(ax, ay, bx, by, max(0.15 * ppm(by), 1.0), "road", 0.55)
        t = t2 * 1.12

    # Facades standing on the outer ground line: segments growing with depth (perspective),
    # each a building or vegetation, some with a low wall or fence in front.
    for side, (_, _, fx) in edges.items():
        t_max = min(((0.0 if side < 0 else w) - vx) / (fx - vx), 50.0) if fx != vx else 1.0
        t = 0.02
        while t < max(t_max, 1.0):
            t2 = t * u(1.25, 1.7)
            (ax, ay), (bx, by) = at(fx, t), at(fx, t2)
            layers = [("building", u(8, 25)) if u() < 0.7 else ("vegetation", u(4, 12))]
            if u() < 0.35:
                layers.append(("wall", u(1.0, 2.5)) if u() < 0.5 else ("fence", u(1.0, 2.0)))
            for kind, height in layers:  # a vertical quad on the ground line, height in metres
                cv.polygon(
                    [(ax, ay), (bx, by), (bx, by - height * ppm(by)), (ax, ay - height * ppm(ay))], kind, u(-0.15, 0.15)
                )
            t = t2

    # Things, sorted by their base row so nearer ones occlude farther ones.
    things = []

    def on_walk(side, t):  # a point on a sidewalk at depth t
        road_x, walk_x, _ = edges[side]
        (ax, ay), (bx, _) = at(road_x, t), at(walk_x, t)
        return ax + u(0.15, 0.85) * (bx - ax), ay

    def on_road(t):
        (ax, ay), (bx, _) = at(xl, t), at(xl + rwb, t)
        return ax + u(0.12, 0.88) * (bx - ax), ay

    for _ in range(rng.integers(2, 6)):
        things.append(("pole", *on_walk(rng.choice([-1, 1]), u(0.15, 1.0))))
    for _ in range(rng.integers(1, 4)):
        things.append(("tree", *on_walk(rng.choice([-1, 1]), u(0.15, 0.9))))
    for _ in range(rng.integers(1, 5)):
        things.append(("person", *on_walk(rng.choice([-1, 1]), u(0.2, 1.0))))
    for _ in range(rng.integers(1, 4)):
        things.append(("car", *on_road(u(0.15, 0.95))))
    for kind, p in (("truck", 0.5), ("bus", 0.45), ("train", 0.4), ("motorcycle", 0.55), ("bicycle", 0.6)):
        if u() < p:  # bicycles ride on the road or stand on a sidewalk
            parked = kind == "bicycle" and u() < 0.5
            far = 0.65 if kind in ("truck", "bus", "train") else 0.95  # big ones stay back: no full-frame walls
            things.append((kind, *(on_walk(rng.choice([-1, 1]), u(0.2, 1.0)) if parked else on_road(u(0.2, far)))))
    for _ in range(rng.integers(0, 4)):
        things.append(("clutter", *on_walk(rng.choice([-1, 1]), u(0.2, 1.0))))
    for kind, x, y in sorted(things, key=lambda th: th[2]):
        _draw_thing(cv, rng, kind, x, y, ppm(y))

    if u() < 0.4:  # ego-vehicle bonnet at the bottom: void
        e = h * u(0.04, 0.09)
        cv.ellipse(w / 2, h + w * 0.5 - e, w * 0.75, w * 0.5, EGO, u(-0.1, 0.1))
    return cv


def _draw_thing(cv: _Canvas, rng: np.random.Generator, kind: str, x: float, y: float, m: float) -> None:
    """One object standing at (x, y) with ``m`` pixels per metre; sizes in metres."""
    u = rng.uniform
    s = u(-0.15, 0.15)  # per-instance shade
    if kind == "pole":
        top = y - u(4.0, 7.0) * m
        cv.rect(x - 0.08 * m, top, x + 0.08 * m, y, "pole", s)
        if u() < 0.5:
            cv.rect(x - 0.2 * m, top, x + 0.2 * m, top + 1.0 * m, "traffic light", s)
            for i, lamp in enumerate((0.4, -0.4, -0.4) if u() < 0.5 else (-0.4, -0.4, 0.4)):
                cv.ellipse(x, top + (0.17 + 0.33 * i) * m, 0.11 * m, 0.11 * m, "traffic light", lamp)
        if u() < 0.6:
            sy, r = top + u(1.2, 2.5) * m, u(0.3, 0.45) * m
            if u() < 0.5:
                cv.ellipse(x, sy, r, r, "traffic sign", s)
            else:
                cv.rect(x - r, sy - r, x + r, sy + r, "traffic sign", s)
    elif kind == "tree":
        cv.rect(x - 0.15 * m, y - 3.0 * m, x + 0.15 * m, y, "vegetation", -0.35)  # trunk
        for _ in range(rng.integers(2, 5)):
            r = u(1.2, 2.2) * m
            cv.ellipse(x + u(-1, 1) * m, y - u(3.5, 5.5) * m, r, r * u(0.8, 1.1), "vegetation", u(-0.15, 0.15))
    elif kind in ("person", "rider"):
        hgt = u(1.6, 1.9) * m
        for dx in (-0.12, 0.12):
            cv.rect(x + (dx - 0.07) * m, y - 0.48 * hgt, x + (dx + 0.07) * m, y, kind, s - 0.2)  # legs
        cv.rect(x - 0.23 * m, y - 0.82 * hgt, x + 0.23 * m, y - 0.46 * hgt, kind, s)
        cv.ellipse(x, y - 0.9 * hgt, 0.12 * m, 0.14 * m, kind, 0.15)
    elif kind == "car":
        w, hgt = 1.8 * m, 1.5 * m
        cv.rect(x - w / 2, y - 0.55 * hgt, x + w / 2, y - 0.08 * hgt, "car", s)
        cv.polygon(
            [
                (x - 0.45 * w, y - 0.55 * hgt),
                (x + 0.45 * w, y - 0.55 * hgt),
                (x + 0.35 * w, y - hgt),
                (x - 0.35 * w, y - hgt),
            ],
            "car",
            s,
        )
        cv.polygon(
            [
                (x - 0.38 * w, y - 0.6 * hgt),
                (x + 0.38 * w, y - 0.6 * hgt),
                (x + 0.3 * w, y - 0.93 * hgt),
                (x - 0.3 * w, y - 0.93 * hgt),
            ],
            "car",
            s - 0.35,
        )
        for dx in (-0.38, 0.38):
            cv.rect(x + (dx - 0.1) * w, y - 0.15 * hgt, x + (dx + 0.1) * w, y, "car", -0.55)  # wheels
    elif kind in ("truck", "bus", "train"):
        w, hgt = {"truck": (2.5, 3.4), "bus": (2.55, 3.2), "train": (2.65, 3.6)}[kind]
        w, hgt = w * m, hgt * m
        cv.rect(x - w / 2, y - hgt, x + w / 2, y - 0.1 * hgt, kind, s)
        if kind != "truck":  # window band
            cv.rect(x - 0.42 * w, y - 0.88 * hgt, x + 0.42 * w, y - 0.55 * hgt, kind, s - 0.3)
        if kind == "train":  # pantograph
            cv.line(x - 0.3 * w, y - hgt, x + 0.1 * w, y - 1.25 * hgt, 0.08 * m, kind, s)
        for dx in (-0.38, 0.38):
            cv.rect(x + (dx - 0.1) * w, y - 0.12 * hgt, x + (dx + 0.1) * w, y, kind, -0.55)
    elif kind in ("motorcycle", "bicycle"):  # side view, sometimes ridden
        motor = kind == "motorcycle"
        half, r = (0.7 if motor else 0.55) * m, (0.32 if motor else 0.34) * m
        for dx in (-half, half):
            cv.ellipse(x + dx, y - r, r, r, kind, -0.35, hole=0.0 if motor else 0.75)
        if motor:
            cv.ellipse(x, y - 2.2 * r, 0.8 * half, 0.45 * r, kind, s)
        else:
            for ax, ay, bx, by in (
                (-half, -r, 0, -2.2 * r),
                (0, -2.2 * r, half, -r),
                (-half, -r, half * 0.6, -2.4 * r),
            ):
                cv.line(x + ax, y + ay, x + bx, y + by, 0.06 * m, kind, s)
        if u() < 0.75:  # rider: seated torso and head above the saddle
            top = y - 2.4 * r - 0.9 * m
            cv.line(x - 0.1 * m, y - 2.3 * r, x + 0.15 * m, y - r, 0.15 * m, "rider", s - 0.2)  # leg
            cv.rect(x - 0.2 * m, top, x + 0.2 * m, y - 2.2 * r, "rider", s)
            cv.ellipse(x + 0.03 * m, top - 0.14 * m, 0.12 * m, 0.14 * m, "rider", 0.15)
    elif kind == "clutter":  # bins, boxes, bollards: void
        sz = u(0.3, 1.0) * m
        if u() < 0.5:
            cv.rect(x - sz / 2, y - sz * u(0.8, 1.6), x + sz / 2, y, UNLABELED, u(-0.4, 0.4))
        else:
            cv.ellipse(x, y - sz / 2, sz / 2, sz / 2, UNLABELED, u(-0.4, 0.4))


def _render(cv: _Canvas, rng: np.random.Generator) -> np.ndarray:
    """RGB uint8 from the painted labels: class colour x (1 + shade + texture), then noise."""
    h, w = cv.ids.shape
    k = 512.0 / w  # texture periods are given for a 512-wide image
    yy = np.arange(h, dtype=np.float32)[:, None] * k
    xx = np.arange(w, dtype=np.float32)[None, :] * k
    hi, lo_amp, s_amp, s_fy, s_fx, c_amp, c_fy, c_fx = (np.take(col, cv.ids) for col in _TEXTURE_COLS)
    lo = rng.standard_normal((h // 16 + 2, w // 16 + 2), dtype=np.float32)
    lo = np.asarray(Image.fromarray(lo, "F").resize((w, h), Image.BILINEAR))  # blotches
    lum = 1.0 + cv.shade
    lum += hi * rng.standard_normal((h, w), dtype=np.float32)
    lum += lo_amp * lo
    lum += s_amp * np.sin((2 * np.pi) * (yy * s_fy + xx * s_fx))
    cy, cx = yy * c_fy, xx * c_fx
    lum -= c_amp * ((cy - np.floor(cy) > 0.35) & (cx - np.floor(cx) > 0.35))  # floor: faster than %
    gain = rng.uniform(0.8, 1.2) * rng.uniform(0.95, 1.05, 3).astype(np.float32)  # brightness, colour cast
    img = _COLOR[cv.ids]
    img *= lum[..., None] * gain
    # Colour noise, uniform in [-4, 4]: from raw bytes because normals cost 4 ms here.
    img += np.frombuffer(rng.bytes(img.size), np.uint8).reshape(img.shape) * np.float32(8 / 255) - 4
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


def generate_scene(seed: int, split: str, index: int, size=(256, 512)) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 HxWx3, Cityscapes labelIds uint8 HxW); a pure function of its arguments."""
    rng = np.random.default_rng([seed, zlib.crc32(split.encode()), index])
    cv = _scene(rng, int(size[0]), int(size[1]))
    return _render(cv, rng), cv.ids


def scene_name(split: str, index: int) -> tuple[str, str]:
    """(city, Cityscapes-style stem ``{city}_{seq:06d}_{frame:06d}``) of a scene."""
    cities = CITIES.get(split, (f"synth{split}",))
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_000019"  # frame 19: the annotated one upstream


def write_synthetic_cityscapes(root, *, splits=None, size=(256, 512), seed: int = 0, progress: bool = True) -> dict:
    """Write ``splits`` ({split: n_images}) under ``root`` in the Cityscapes layout; returns the counts."""
    splits = dict(splits if splits is not None else {"train": 40, "val": 10})
    root = Path(root)
    jobs = [(split, i) for split, n in splits.items() for i in range(int(n))]
    for split, i in tqdm(jobs, desc=f"synthetic -> {root}", disable=not progress, unit="img"):
        image, ids = generate_scene(seed, split, i, size)
        city, stem = scene_name(split, i)
        for sub, suffix, arr in (("leftImg8bit", "leftImg8bit", image), ("gtFine", "gtFine_labelIds", ids)):
            d = root / sub / split / city
            d.mkdir(parents=True, exist_ok=True)
            # compress_level 1: ~2x faster than the default (6) on these noisy images; lossless either way.
            Image.fromarray(arr).save(d / f"{stem}_{suffix}.png", compress_level=1)
    return {split: int(n) for split, n in splits.items()}
