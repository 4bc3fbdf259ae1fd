"""The one preprocessing function shared by trainer and daemon: crops, colour orders, scaling."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.preprocess import (
    PreprocessSpec,
    context_crop,
    context_window,
    crop_with_margin,
    face_input,
    preprocess_crop,
)

# A BGR crop: left half pure blue, right half pure red.
CROP = np.zeros((40, 40, 3), np.uint8)
CROP[:, :20] = (255, 0, 0)
CROP[:, 20:] = (0, 0, 255)


def test_rgb_bgr_and_ycrcb_orders_scale_to_unit_range() -> None:
    rgb = preprocess_crop(CROP, PreprocessSpec(40, 40, "RGB"))
    bgr = preprocess_crop(CROP, PreprocessSpec(40, 40, "BGR"))
    ycrcb = preprocess_crop(CROP, PreprocessSpec(40, 40, "YCrCb"))
    assert rgb.dtype == bgr.dtype == ycrcb.dtype == np.float32
    np.testing.assert_allclose(rgb[0, 0], [0.0, 0.0, 1.0])  # blue is the last channel in RGB
    np.testing.assert_allclose(bgr[0, 0], [1.0, 0.0, 0.0])
    expected = cv2.cvtColor(CROP, cv2.COLOR_BGR2YCrCb)[0, 0] / 255.0
    np.testing.assert_allclose(ycrcb[0, 0], expected, atol=1e-6)
    assert ycrcb[0, 0, 2] > 0.9 and ycrcb[0, 39, 1] > 0.9  # blue: high Cb; red: high Cr
    assert 0.0 <= ycrcb.min() and ycrcb.max() <= 1.0


def test_unknown_colour_order_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="HSV"):
        PreprocessSpec(32, 32, "HSV")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="colour order"):
        PreprocessSpec.from_json(
            {
                "input_height": 32,
                "input_width": 32,
                "colour_order": "rgb",
                "margin": 1.0,
                "scale": 1 / 255,
            }
        )


def test_spec_round_trips_through_json() -> None:
    spec = PreprocessSpec(24, 32, "YCrCb", margin=1.5, scale=1 / 127.5)
    assert PreprocessSpec.from_json(spec.to_json()) == spec


def test_margin_crop_reflects_outside_the_frame() -> None:
    frame = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
    inside = crop_with_margin(frame, (2, 2, 6, 6), margin=1.0)
    np.testing.assert_array_equal(inside, frame[2:6, 2:6])
    edge = crop_with_margin(frame, (0, 0, 4, 4), margin=2.0)  # (-2, -2, 6, 6)
    assert edge.shape == (8, 8, 3)
    np.testing.assert_array_equal(edge[2:, 2:], frame[0:6, 0:6])
    np.testing.assert_array_equal(edge[0, 2:], frame[2, 0:6])  # reflected about row 0
    with pytest.raises(ValueError, match="outside"):
        crop_with_margin(frame, (20, 20, 30, 30))


def test_face_input_is_crop_then_preprocess() -> None:
    frame = np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    spec = PreprocessSpec(16, 16, "YCrCb", margin=1.2)
    box = (10, 12, 40, 44)
    expected = preprocess_crop(crop_with_margin(frame, box, 1.2), spec)
    np.testing.assert_array_equal(face_input(frame, box, spec), expected)


def test_highpass_keeps_fine_texture_and_drops_overall_light() -> None:
    rng = np.random.default_rng(2)
    texture = rng.integers(-20, 21, (32, 32, 1)).repeat(3, axis=2)
    dim = np.clip(80 + texture, 0, 255).astype(np.uint8)
    bright = np.clip(170 + texture, 0, 255).astype(np.uint8)
    spec = PreprocessSpec(32, 32, "RGB", highpass_sigma=1.5)
    a, b = preprocess_crop(dim, spec), preprocess_crop(bright, spec)
    np.testing.assert_allclose(a, b, atol=1e-4)  # the same texture under other light
    assert abs(float(a.mean()) - 0.5) < 0.01 and float(a.std()) > 0.02
    flat = preprocess_crop(np.full((32, 32, 3), 90, np.uint8), spec)
    np.testing.assert_allclose(flat, 0.5, atol=1e-5)  # no texture, nothing left
    assert PreprocessSpec.from_json(spec.to_json()) == spec
    legacy = {k: v for k, v in spec.to_json().items() if k != "highpass_sigma"}
    assert PreprocessSpec.from_json(legacy).highpass_sigma == 0.0  # sidecars from before


def _reference_crop_image() -> type:
    """Silent-Face's own crop code (Apache-2.0, ../shared/peers/silentface/reference)."""
    import importlib.util
    from pathlib import Path

    path = (
        Path(__file__).resolve().parents[2]
        / "shared/peers/silentface/reference/generate_patches.py"
    )
    if not path.is_file():
        pytest.skip(f"{path} is not here")
    module_spec = importlib.util.spec_from_file_location("sf_generate_patches", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.CropImage  # type: ignore[no-any-return]


def test_context_crop_cuts_what_silent_face_cuts() -> None:
    """Same window and same pixels as the original crop, for boxes inside, at and over the edge,
    and for faces too large for the requested scale (the clamp)."""
    crop_image = _reference_crop_image()()
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    spec = PreprocessSpec(
        80, 80, "BGR", scale=1.0, geometry="context_shift", context_scales=(2.7,), resize="linear"
    )
    boxes = [
        (140, 100, 180, 150),
        (0, 0, 50, 60),
        (290, 200, 330, 260),
        (60, 20, 260, 230),
        (-20, 30, 40, 100),
    ]
    for x1, y1, x2, y2 in boxes:
        for scale in (1.0, 2.7, 4.0):
            theirs = crop_image.crop(frame, [x1, y1, x2 - x1, y2 - y1], scale, 80, 80)
            ours = cv2.resize(context_crop(frame, (x1, y1, x2, y2), scale), (80, 80))
            np.testing.assert_array_equal(ours, theirs)
        ours_input = face_input(frame, (x1, y1, x2, y2), spec)
        theirs = crop_image.crop(frame, [x1, y1, x2 - x1, y2 - y1], 2.7, 80, 80)
        np.testing.assert_array_equal(ours_input, theirs.astype(np.float32))


def test_context_window_never_pads_and_clamps_large_faces() -> None:
    # A 100 px face at the left edge of a 320x240 frame: 2.7x would be 270 px > 239, so the
    # scale is clamped to fit and the window shifted right to start at 0; no black border.
    x1, y1, x2, y2 = context_window(320, 240, (0, 70, 100, 170), 2.7)
    assert (x1, y1) == (0, 0) and y2 == 239 and x2 <= 319
    frame = np.full((240, 320, 3), 200, np.uint8)
    crop = context_crop(frame, (0, 70, 100, 170), 2.7)
    assert crop.min() == 200  # nothing padded
    assert context_window(320, 240, (150, 110, 170, 130), 2.0) == (140, 100, 180, 140)


def test_two_context_scales_stack_on_channels() -> None:
    frame = np.random.default_rng(4).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    spec = PreprocessSpec(
        80,
        80,
        "BGR",
        scale=1.0,
        geometry="context_shift",
        context_scales=(2.7, 4.0),
        resize="linear",
    )
    box = (140, 100, 180, 150)
    x = face_input(frame, box, spec)
    assert x.shape == (80, 80, 6) and spec.channels == 6
    np.testing.assert_array_equal(x[..., :3], preprocess_crop(context_crop(frame, box, 2.7), spec))
    np.testing.assert_array_equal(x[..., 3:], preprocess_crop(context_crop(frame, box, 4.0), spec))
    assert PreprocessSpec.from_json(spec.to_json()) == spec


def test_unknown_geometry_and_bad_scales_are_refused() -> None:
    base = PreprocessSpec(80, 80, "BGR").to_json()
    with pytest.raises(ValueError, match="crop geometry 'fisheye'"):
        PreprocessSpec.from_json({**base, "geometry": "fisheye"})
    with pytest.raises(ValueError, match="context_scales"):
        PreprocessSpec(80, 80, "BGR", geometry="context_shift")
    with pytest.raises(ValueError, match="context_shift"):
        PreprocessSpec(80, 80, "BGR", context_scales=(2.7,))
    legacy = {k: v for k, v in base.items() if k not in ("geometry", "context_scales", "resize")}
    assert PreprocessSpec.from_json(legacy).geometry == "margin"  # sidecars from before v2
