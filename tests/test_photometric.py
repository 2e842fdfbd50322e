"""Photometric augmentation on the device (jax_csfcn/data/photometric.py) against the host reference.

* draw + host-apply is ``pipeline.augment``'s blur and jitter, bit for bit, and uses its RNG alike;
* the JAX version equals the host on random images, bit for bit: every op alone, every chain
  of them, on padded and flipped canvases.

Why equality is the rule.  The blur (integer fixed-point sums), the hue (PIL's tables and exact
integer fractions) and brightness (one float32 product) are exact by construction.  Contrast and
saturation are float32 expressions that both forms evaluate in the same order, with each product
kept apart from the following addition on the device (no FMA: jax_csfcn/data/photometric.py,
module doc), so each operation rounds alike.  A fused multiply-add would not stay hidden: it
moves about one value in a million across a .5 boundary per op (measured before the products
were kept apart, with the grey still a BLAS product: up to 4 levels after a chain with hue), so
``test_contrast_and_saturation_round_like_numpy_at_scale`` compares 3 M values per op: it fails
with the products left to the compiler.

The frozen pre-split reference (``_frozen_augment``) computed its grey as a BLAS matrix product,
which rounds differently on different CPUs; today's reference computes it element by element.
Against it we require what the two greys allow: >= 99.9 % identical values and at most one in
10 000 off by more than one level.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from PIL import Image, ImageFilter

from jax_csfcn.data import photometric as ph
from jax_csfcn.data.pipeline import AugmentConfig, augment, scaled_size

H, W = 24, 40  # the one canvas size of the device tests (one compilation per static window)
REACH = 2  # their static box-radius window: Gaussian radii up to ~2.9
_apply = jax.jit(ph.apply_photometric, static_argnames="max_box_radius")

FULL = AugmentConfig(crop_size=(H, W), scale_range=(0.5, 1.5), blur_prob=1.0, blur_sigma=(0.0, 2.5),
                     color_jitter=0.5, hue_jitter=0.1)  # fmt: skip


def _images(rng, n=2, h=H, w=W):
    return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _full_box(n=2):
    return np.tile(np.array([0, 0, H, W], np.int32), (n, 1))


def _host_on_canvas(canvas, params, box):
    """The host reference on each canvas's content, pasted back into zero canvases."""
    out = np.zeros_like(canvas)
    for i, (y0, x0, y1, x1) in enumerate(box):
        p = {k: v[i] for k, v in params.items()}
        out[i, y0:y1, x0:x1] = ph.apply_photometric_host(canvas[i, y0:y1, x0:x1], p)
    return out


def _agreement(got, ref) -> tuple[int, float, float]:
    """(max |difference|, fraction of identical values, fraction off by more than one level)."""
    d = np.abs(np.asarray(got, np.int32) - np.asarray(ref, np.int32))
    return int(d.max()), float(np.mean(d == 0)), float(np.mean(d > 1))


def _assert_chain_close(got, ref):
    """The bound between the frozen reference and today's (module doc)."""
    _, same, wide = _agreement(got, ref)
    assert same >= 0.999 and wide <= 1e-4, (same, wide)


def _blur_params(radius: float) -> dict:
    p = ph.identity_photometric()
    r, ww, fw = ph.box_blur_weights(radius)
    p.update(blur=np.bool_(True), blur_radius=np.float32(radius), box_radius=np.int32(r), box_ww=np.uint32(ww),
             box_fw=np.uint32(fw))  # fmt: skip
    return p


# ----------------------------------------------------------------------------------------------
# Host: draw + apply is augment


def _geometry(image, label, aug, rng):
    """``pipeline.augment``'s draws and resampling up to the flip: (content crop, flip)."""
    h, w = label.shape
    ch, cw = aug.crop_size
    nh, nw = scaled_size((h, w), rng.uniform(*aug.scale_range), aug.base_size)
    oh, ow = min(ch, nh), min(cw, nw)
    y0 = int(rng.integers(0, nh - oh + 1))
    x0 = int(rng.integers(0, nw - ow + 1))
    flip = aug.flip and rng.random() < 0.5
    box = (x0 * w / nw, y0 * h / nh, (x0 + ow) * w / nw, (y0 + oh) * h / nh)
    return np.asarray(Image.fromarray(image).resize((ow, oh), Image.BILINEAR, box=box)), flip


def _canvas(content, aug, flip):
    out = np.zeros((*aug.crop_size, 3), np.uint8)
    out[: content.shape[0], : content.shape[1]] = content
    return out[:, ::-1] if flip else out


_GRAY = np.array([0.299, 0.587, 0.114], np.float32)


def _frozen_jitter(img, strength, rng, hue):
    """The train pipeline's colour jitter before the photometric split (pipeline.py at ae82929),
    kept verbatim as the golden reference: its own draws, then the ops in a random order."""

    def to_uint8(x):
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)

    factors = rng.uniform(1.0 - strength, 1.0 + strength, 3) if strength > 0 else None
    shift = float(rng.uniform(-hue, hue)) if hue > 0 else None
    ops = ([0, 1, 2] if factors is not None else []) + ([3] if shift is not None else [])
    for op in rng.permutation(ops) if ops else ():
        x = img.astype(np.float32)
        if op == 0:
            img = to_uint8(x * np.float32(factors[0]))
        elif op == 1:
            m = float((x @ _GRAY).mean())
            img = to_uint8((x - m) * np.float32(factors[1]) + m)
        elif op == 2:
            gray = (x @ _GRAY)[..., None]
            img = to_uint8((x - gray) * np.float32(factors[2]) + gray)
        else:
            hsv = np.array(Image.fromarray(img).convert("HSV"))
            hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(shift * 255))) % 256
            img = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
    return img


def _frozen_augment(image, label, aug, rng):
    """``pipeline.augment``'s image before the photometric split (ae82929): blur and jitter drawn
    and applied in place, with PIL and numpy."""
    content, flip = _geometry(image, label, aug, rng)
    img = Image.fromarray(content)
    if aug.blur_prob > 0 and rng.random() < aug.blur_prob:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(*aug.blur_sigma))))
    img = np.asarray(img)
    if aug.color_jitter > 0 or aug.hue_jitter > 0:
        img = _frozen_jitter(img, aug.color_jitter, rng, aug.hue_jitter)
    return _canvas(img, aug, flip)


def _augment_via_params(image, label, aug, rng):
    """The same with draw_photometric + apply_photometric_host; also returns the canvas before
    them, the params and the content box (what a device-side pipeline hands the train step)."""
    content, flip = _geometry(image, label, aug, rng)
    params = ph.draw_photometric(rng, aug)
    after = _canvas(ph.apply_photometric_host(content, params), aug, flip)
    box = ph.content_box(content.shape[:2], aug.crop_size, flip)
    return after, _canvas(content, aug, flip), params, box


AUGS = {
    "blur1-jitter-hue": FULL,
    "blur.5-jitter": AugmentConfig(crop_size=(H, W), scale_range=(0.5, 1.5), blur_prob=0.5, color_jitter=0.5),
    "blur.5-hue": AugmentConfig(
        crop_size=(H, W), scale_range=(0.5, 1.5), blur_prob=0.5, blur_sigma=(0.5, 2.5), hue_jitter=0.1
    ),  # fmt: skip
    "jitter-hue": AugmentConfig(crop_size=(H, W), scale_range=(0.5, 1.5), color_jitter=0.3, hue_jitter=0.1),
    "none": AugmentConfig(crop_size=(H, W), scale_range=(0.5, 1.5)),
}


@pytest.mark.parametrize("name", list(AUGS))
def test_draw_and_host_apply_reproduce_augment(name, rng):
    """With the same RNG consumption: draw + host-apply against the frozen pre-split ``augment``
    (up to its BLAS grey, module doc), and today's ``pipeline.augment`` (built on them) bit for bit."""
    aug = AUGS[name]
    padded = blurred = 0
    for i in range(8):
        image = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
        label = rng.integers(0, 19, (24, 40), dtype=np.uint8)
        seed = int(rng.integers(2**32))
        r1, r2, r3 = (np.random.default_rng(seed) for _ in range(3))
        want = _frozen_augment(image, label, aug, r1)
        got, _, params, box = _augment_via_params(image, label, aug, r2)
        _assert_chain_close(got, want)  # the frozen grey was a BLAS product (module doc)
        np.testing.assert_array_equal(augment(image, label, aug, r3)[0], got, err_msg=f"augment, record {i}")
        assert r1.random() == r2.random() == r3.random(), "the RNG was consumed differently"
        padded += int(box[2] - box[0] < H or box[3] - box[1] < W)
        blurred += int(params["blur"])
    assert padded > 0  # some records have padding (and flips: p = 1/2)
    if aug.blur_prob > 0:
        assert blurred > 0


def test_params_have_fixed_shapes_and_dtypes(rng):
    ref = {k: (np.asarray(v).shape, np.asarray(v).dtype) for k, v in ph.identity_photometric().items()}
    for aug in AUGS.values():
        for _ in range(5):
            p = ph.draw_photometric(rng, aug)
            assert {k: (np.asarray(v).shape, np.asarray(v).dtype) for k, v in p.items()} == ref
            order = p["order"][p["order"] >= 0]
            assert len(set(order.tolist())) == len(order)
            assert np.all(p["order"][len(order) :] == -1)
    batch = ph.stack_photometric([ph.draw_photometric(rng, FULL) for _ in range(3)])
    assert batch["order"].shape == (3, ph.NUM_OPS) and batch["factors"].shape == (3, 3)


def test_max_box_radius_bounds_every_draw():
    for hi in (0.5, 1.0, 2.5, 2.9, 6.0):
        aug = AugmentConfig(blur_prob=0.5, blur_sigma=(0.0, hi))
        bound = ph.max_box_radius(aug)
        radii = [ph.box_blur_weights(s)[0] for s in np.linspace(0.0, hi, 3001)]
        assert max(radii) <= bound <= max(radii) + 1
    assert ph.max_box_radius(AugmentConfig()) == 0  # no blur
    assert ph.max_box_radius(AugmentConfig(blur_prob=0.5)) == 0  # the recipe's U(0, 1): 3 taps
    assert ph.max_box_radius(FULL) <= REACH
    for s in (0.0, 0.3, 1.0, 2.5):  # the taps' weights never exceed 1.0, so uint32 sums cannot overflow
        r, ww, fw = ph.box_blur_weights(s)
        assert (2 * r + 1) * ww + 2 * fw <= 1 << 24


# ----------------------------------------------------------------------------------------------
# Device against host


def test_blur_is_bit_identical_to_pil(rng):
    radii = [0.0, 0.3, 1.0, 2.5, 1e-30, *rng.uniform(0.0, 2.9, 7)]
    assert max(ph.box_blur_weights(r)[0] for r in radii) <= REACH
    assert ph.box_blur_weights(2.5)[0] == 2  # the wide window is used
    # the second image's content is a sub-box: PIL blurs that crop alone, extending its edges
    box = np.array([[0, 0, H, W], [3, 5, H - 2, W - 9]], np.int32)
    for i in range(0, len(radii), 2):
        params = ph.stack_photometric([_blur_params(r) for r in radii[i : i + 2]])
        canvas = _images(rng)
        got = np.asarray(_apply(canvas, params, box, max_box_radius=REACH))
        np.testing.assert_array_equal(got, _host_on_canvas(canvas, params, box), err_msg=f"radii {radii[i : i + 2]}")


def test_blur_with_the_recipes_window(rng):
    """The default recipe (radius ~ U(0, 1)) needs no integer box radius: a 3-tap window."""
    aug = AugmentConfig(crop_size=(H, W), blur_prob=1.0, blur_sigma=(0.0, 1.0), color_jitter=0.5)
    assert ph.max_box_radius(aug) == 0
    for _ in range(3):
        params = ph.stack_photometric([ph.draw_photometric(rng, aug) for _ in range(2)])
        params["order"][:] = -1  # blur alone: bit-identical
        canvas = _images(rng)
        got = np.asarray(_apply(canvas, params, _full_box(), max_box_radius=0))
        np.testing.assert_array_equal(got, _host_on_canvas(canvas, params, _full_box()))


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation", "hue"])
def test_each_jitter_op_alone(op, rng):
    code = {"brightness": ph.BRIGHTNESS, "contrast": ph.CONTRAST, "saturation": ph.SATURATION, "hue": ph.HUE}[op]
    for _ in range(4):
        ps = []
        for _ in range(2):
            p = ph.identity_photometric()
            p["order"][0] = code
            p["factors"] = rng.uniform(0.5, 1.5, 3).astype(np.float32)
            p["hue_shift"] = np.int32(rng.integers(-26, 27))
            ps.append(p)
        params, canvas = ph.stack_photometric(ps), _images(rng)
        got = np.asarray(_apply(canvas, params, _full_box(), max_box_radius=REACH))
        ref = _host_on_canvas(canvas, params, _full_box())
        assert not np.array_equal(ref, canvas)  # the op did something
        np.testing.assert_array_equal(got, ref)


def test_contrast_and_saturation_round_like_numpy_at_scale(rng):
    """Millions of values: an FMA flips about one in a million across a .5 boundary, so only a
    large canvas shows whether the device keeps its products apart (module doc)."""
    canvas = rng.integers(0, 256, (1, 1024, 1024, 3), dtype=np.uint8)
    box = np.array([[0, 0, 1024, 1024]], np.int32)
    for code in (ph.CONTRAST, ph.SATURATION):
        p = ph.identity_photometric()
        p["order"][0] = code
        p["factors"] = rng.uniform(0.5, 1.5, 3).astype(np.float32)
        params = ph.stack_photometric([p])
        got = np.asarray(_apply(canvas, params, box, max_box_radius=0))
        np.testing.assert_array_equal(got, _host_on_canvas(canvas, params, box), err_msg=f"op {code}")


def test_rounding_ties_go_to_even(rng):
    """Factors 0.5 and 1.5 put every odd value on a .5 tie: np.rint's half-to-even, not half-up."""
    ps = [ph.identity_photometric() for _ in range(2)]
    for p, f in zip(ps, (0.5, 1.5), strict=True):
        p["order"][0] = ph.BRIGHTNESS
        p["factors"][0] = f
    params, canvas = ph.stack_photometric(ps), _images(rng)
    got = np.asarray(_apply(canvas, params, _full_box(), max_box_radius=REACH))
    np.testing.assert_array_equal(got, _host_on_canvas(canvas, params, _full_box()))
    assert np.any(canvas % 4 == 1) and np.any(canvas % 4 == 3)  # ties that round down and up


def test_hsv_conversions_match_pil_on_all_inputs(rng):
    """All 2^24 RGB triples: RGB -> HSV, HSV -> RGB, and the shifted round trip of the hue op."""
    v = np.arange(1 << 24, dtype=np.uint32)
    triples = np.stack([v >> 16, (v >> 8) & 255, v & 255], -1).astype(np.uint8).reshape(4096, 4096, 3)
    steps = int(rng.integers(1, 256))

    @jax.jit
    def device(x):
        x = x.astype(np.int32)
        hsv = ph.rgb_to_hsv(x)
        shifted = hsv.at[..., 0].set((hsv[..., 0] + steps) & 255)
        return hsv.astype(np.uint8), ph.hsv_to_rgb(x).astype(np.uint8), ph.hsv_to_rgb(shifted).astype(np.uint8)

    hsv, rgb, round_trip = (np.asarray(a) for a in device(triples))
    np.testing.assert_array_equal(hsv, np.asarray(Image.fromarray(triples).convert("HSV")))
    np.testing.assert_array_equal(rgb, np.asarray(Image.fromarray(triples, "HSV").convert("RGB")))
    np.testing.assert_array_equal(round_trip, ph.hue_shift_host(triples, steps))


def test_full_recipe_in_random_orders(rng):
    got, ref, orders = [], [], set()
    for _ in range(8):
        ps = [ph.draw_photometric(rng, FULL) for _ in range(2)]
        orders.update(tuple(p["order"].tolist()) for p in ps)
        params, canvas = ph.stack_photometric(ps), _images(rng)
        got.append(np.asarray(_apply(canvas, params, _full_box(), max_box_radius=REACH)))
        ref.append(_host_on_canvas(canvas, params, _full_box()))
    assert len(orders) >= 5
    np.testing.assert_array_equal(got, ref)


def test_padded_and_flipped_canvas(rng):
    """Content at the top left, or at the right after a flip: the result is the host's on the
    content, padded with zeros, then flipped; the padding's own values never leak in."""
    oh, ow = 17, 29
    content = rng.integers(0, 256, (2, oh, ow, 3), dtype=np.uint8)
    ps = [ph.draw_photometric(rng, FULL) for _ in range(2)]
    ps[0]["order"][:] = [ph.CONTRAST, ph.HUE, ph.SATURATION, ph.BRIGHTNESS]  # the mean over the content
    params = ph.stack_photometric(ps)
    ref = np.zeros((2, H, W, 3), np.uint8)
    for i in range(2):
        ref[i, :oh, :ow] = ph.apply_photometric_host(content[i], ps[i])
    results = {}
    for flip in (False, True):
        canvas = np.zeros((2, H, W, 3), np.uint8)
        canvas[1] = rng.integers(1, 256, (H, W, 3), dtype=np.uint8)  # image 1: random values in its padding
        canvas[:, :oh, :ow] = content
        box = np.stack([ph.content_box((oh, ow), (H, W), flip)] * 2)
        if flip:
            canvas = canvas[:, :, ::-1]
        got = np.asarray(_apply(np.ascontiguousarray(canvas), params, box, max_box_radius=REACH))
        want = ref[:, :, ::-1] if flip else ref
        pad = np.ones((H, W), bool)
        pad[box[0, 0] : box[0, 2], box[0, 1] : box[0, 3]] = False
        assert not got[:, pad].any(), "padding must stay 0"
        np.testing.assert_array_equal(got, want)
        results[flip] = got
    np.testing.assert_array_equal(results[True], results[False][:, :, ::-1])  # the flip commutes exactly


def test_device_reproduces_augment(rng):
    """End to end: augment's geometry on the host, the photometric part on the device."""
    got, want, boxes = [], [], []
    for _ in range(3):
        recs = []
        for _ in range(2):
            image = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
            label = rng.integers(0, 19, (24, 40), dtype=np.uint8)
            seed = int(rng.integers(2**32))
            expected, _ = augment(image, label, FULL, np.random.default_rng(seed))
            _, before, params, box = _augment_via_params(image, label, FULL, np.random.default_rng(seed))
            recs.append((expected, before, params, box))
        canvas = np.stack([r[1] for r in recs])
        params, box = ph.stack_photometric([r[2] for r in recs]), np.stack([r[3] for r in recs])
        got.append(np.asarray(_apply(canvas, params, box, max_box_radius=REACH)))
        want.append(np.stack([r[0] for r in recs]))
        boxes.extend(box)
    np.testing.assert_array_equal(got, want)
    assert any(b[2] < H or b[3] - b[1] < W for b in boxes) and any(b[1] > 0 for b in boxes)  # padded, flipped


def test_apply_refuses_a_box_wider_than_its_window(rng):
    params = ph.stack_photometric([_blur_params(2.5), ph.identity_photometric()])
    with pytest.raises(ValueError, match="max_box_radius"):
        ph.apply_photometric(_images(rng), params, _full_box(), max_box_radius=0)
