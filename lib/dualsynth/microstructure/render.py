"""Step 3 of the generator: the brightfield micrograph drawn from the class map and the grain structure.

:func:`_render` runs the steps below in order; every step that draws random numbers draws them from the one
generator it is handed, in the order listed, so a seed gives the same image as it always did (the embedded default
stays byte-identical):

1. :func:`_grain_colours` - the colour of each (class, grain) pair: orientation contrast (brightness, tint) of the
   matrix and eta grains;
2. :func:`_luminance` - a brightness factor per pixel: etched grain-boundary lines, darker oxide cores
   (:func:`_oxide_cores`), fine mottling and blotches, polishing scratches (:func:`_scratches`);
3. :func:`_psf_blur` - the optical point-spread function;
4. :func:`_oxide_fringes` - blue fringes just outside oxide particles;
5. :func:`_edf_blur_regions` - extended-depth-of-focus artefacts: a few soft-edged locally blurred areas (and the
   ``blur_map`` that records them);
6. :func:`_illumination` - vignetting, a smooth ripple, bluish corners;
7. :func:`_sensor_noise` - signal-dependent noise per channel, then 8 bits.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from .noise import _smooth_noise, _smoothstep
from .params import ETA, MATRIX, OXIDE, NdFeBParams


def _render(rng, p: NdFeBParams, mask, grain, gb, pid, ox_dist, n_seeds):
    """The uint8 RGB micrograph and the EDF ``blur_map`` (float32, 0 where sharp) of a class map ``mask`` with its
    grain labels ``grain`` (``n_seeds`` grains), distance to the grain boundaries ``gb``, oxide particle ids
    ``pid`` and signed distance to the oxides ``ox_dist``."""
    img = _grain_colours(rng, p, mask, grain, n_seeds)
    oxm = mask == OXIDE
    img *= _luminance(rng, p, mask, gb, pid, ox_dist, oxm)[..., None]
    _psf_blur(p, img)
    _oxide_fringes(p, img, oxm, ox_dist)
    blur_map = _edf_blur_regions(rng, p, img)
    _illumination(rng, p, img)
    return _sensor_noise(rng, p, img), blur_map


def _grain_colours(rng, p: NdFeBParams, mask, grain, n_seeds) -> np.ndarray:
    """Step 1: float32 (H, W, 3) colours from a per-(class, grain) table: matrix and eta grains get a brightness
    factor and a slight tint (orientation contrast); one gather builds the image."""
    colors = np.array([p.color_matrix, p.color_eta, p.color_oxide, p.color_nd_rich], dtype=np.float32)
    gain = (1.0 + p.grain_contrast * rng.standard_normal(n_seeds)).astype(np.float32)
    tint = (p.grain_tint * rng.standard_normal((n_seeds, 3))).astype(np.float32)
    table = np.repeat(colors[:, None, :], n_seeds, axis=1)
    for c in (MATRIX, ETA):
        table[c] = table[c] * gain[:, None] + tint
    return table.reshape(-1, 3)[mask.astype(np.intp) * n_seeds + grain]


def _luminance(rng, p: NdFeBParams, mask, gb, pid, ox_dist, oxm) -> np.ndarray:
    """Step 2: the brightness factor (H, W): etched boundary lines on the grains, oxide cores, texture, scratches."""
    H, W = p.height, p.width
    sc = p.scale
    line_w = 0.9 * max(sc, 0.6)
    is_grain = mask <= ETA
    lum = np.where(is_grain, 1.0 - p.boundary_darkening * np.exp(-((gb / line_w) ** 2)), 1.0).astype(np.float32)
    if oxm.any():
        lum[oxm] *= _oxide_cores(rng, p, pid, ox_dist, oxm)
    # fine mottling + medium blotches
    lum *= 1.0 + p.texture_strength * 0.7 * (
        _smooth_noise(rng, (H, W), max(0.8, 1.2 * sc)) + _smooth_noise(rng, (H, W), max(1.5, 6.0 * sc))
    )
    scr = _scratches(rng, p)
    if scr is not None:
        lum *= 1.0 + p.scratch_strength * np.clip(scr, -1.5, 1.5)
    return lum


def _oxide_cores(rng, p: NdFeBParams, pid, ox_dist, oxm) -> np.ndarray:
    """The oxide pixels' factor: darker with depth inside the particle (2 px where unknown: fallback growth), times a
    brightness per particle."""
    inside = np.where(np.isfinite(ox_dist[oxm]), np.clip(-ox_dist[oxm], 0.0, None), 2.0)
    core = 1.0 - p.oxide_core_darkening * (1.0 - np.exp(-np.maximum(inside - 1.0, 0.0) / 3.0))
    n_p = int(pid.max()) + 1
    pgain = (1.0 + 0.06 * rng.standard_normal(max(n_p, 1))).astype(np.float32)
    pp = pid[oxm]
    return core * np.where(pp >= 0, pgain[np.maximum(pp, 0)], 1.0)


def _scratches(rng, p: NdFeBParams) -> np.ndarray | None:
    """Polishing scratches (float32 (H, W), signed, blurred), or None without any: a Poisson number of long thin
    straight lines, mostly in one direction, fading in and out along their length.  The count is drawn even when
    ``scratch_strength`` is 0."""
    H, W = p.height, p.width
    n_scr = rng.poisson(p.scratches_per_mpx * H * W / 1e6)
    if n_scr == 0 or p.scratch_strength <= 0:
        return None
    from skimage.draw import line_aa  # (scikit-image's drawing module; only scratches need it)

    scr = np.zeros((H, W), dtype=np.float32)
    main_dir = rng.uniform(0, np.pi)
    diag = math.hypot(H, W)
    for _ in range(n_scr):
        a = main_dir + rng.normal(0, 0.25) if rng.random() < 0.75 else rng.uniform(0, np.pi)
        L = rng.uniform(0.1, 0.6) * diag
        cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        dy, dx = math.sin(a) * L / 2, math.cos(a) * L / 2
        rr, cc, val = line_aa(int(cy - dy), int(cx - dx), int(cy + dy), int(cx + dx))
        ok = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
        amp = rng.uniform(0.3, 1.0) * (1 if rng.random() < 0.6 else -1)
        t = np.linspace(0, np.pi, ok.size)  # intensity fades in and out along the scratch
        scr[rr[ok], cc[ok]] += (amp * val * np.sin(t))[ok]
    return ndi.gaussian_filter(scr, 0.6)


def _psf_blur(p: NdFeBParams, img: np.ndarray) -> None:
    """Step 3, in place: the optical PSF, a Gaussian of ``psf_sigma`` (times the length scale, at least 0.45 px)."""
    if p.psf_sigma > 0:
        psf = max(0.45, p.psf_sigma * p.scale)
        for c in range(3):
            img[..., c] = ndi.gaussian_filter(img[..., c], psf)


def _oxide_fringes(p: NdFeBParams, img: np.ndarray, oxm, ox_dist) -> None:
    """Step 4, in place: blue fringes just outside the oxide particles (``ox_dist``: inf far from them)."""
    if not (p.fringe_strength > 0 and oxm.any()):
        return
    fw = max(0.7, p.fringe_width_px * p.scale)
    near = (~oxm) & (ox_dist < 0.75 * fw + 3.0 * fw)
    wf = p.fringe_strength * np.exp(-(((ox_dist[near] - 0.75 * fw) / fw) ** 2))
    shift = np.array([-0.10, -0.03, 0.09], dtype=np.float32)
    img[near] += wf[:, None].astype(np.float32) * shift


def _edf_blur_regions(rng, p: NdFeBParams, img: np.ndarray) -> np.ndarray:
    """Step 5, in place: a few soft-edged locally blurred areas (EDF artefacts); returns the ``blur_map`` (the
    blend weight of the blurred image, 0 where sharp)."""
    H, W = p.height, p.width
    blur_map = np.zeros((H, W), dtype=np.float32)
    if p.blur_regions_per_mpx <= 0:
        return blur_map
    sc, d = p.scale, p.grain_diameter_px
    n_blur = max(1, rng.poisson(p.blur_regions_per_mpx * H * W / 1e6))
    for _ in range(n_blur):
        r = rng.uniform(*p.blur_region_radius) * d
        r = min(r, 0.35 * min(H, W))
        sigma = max(0.8, rng.uniform(*p.blur_sigma) * sc)
        cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        R = int(1.4 * r) + 1
        y0, y1 = max(0, int(cy) - R), min(H, int(cy) + R + 1)
        x0, x1 = max(0, int(cx) - R), min(W, int(cx) + R + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
        xx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
        rho = np.sqrt(yy * yy + xx * xx) / r
        wobble = 0.2 * _smooth_noise(rng, (y1 - y0, x1 - x0), 0.3 * r)
        m = _smoothstep((1.0 - rho + wobble) / 0.45)
        m = np.maximum(blur_map[y0:y1, x0:x1], m)
        blur_map[y0:y1, x0:x1] = m
        m0 = 3 * int(math.ceil(sigma))
        by0, by1 = max(0, y0 - m0), min(H, y1 + m0)
        bx0, bx1 = max(0, x0 - m0), min(W, x1 + m0)
        blurred = ndi.gaussian_filter(img[by0:by1, bx0:bx1], (sigma, sigma, 0))
        blurred = blurred[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
        cur = img[y0:y1, x0:x1]
        img[y0:y1, x0:x1] = cur + m[..., None] * (blurred - cur)
    return blur_map


def _illumination(rng, p: NdFeBParams, img: np.ndarray) -> None:
    """Step 6, in place: vignetting around an off-centre point, a smooth ripple, an overall gain, bluish corners."""
    H, W = p.height, p.width
    yy = (np.arange(H, dtype=np.float32) - (H - 1) / 2.0 + rng.uniform(-0.1, 0.1) * H) / (max(H, W) / 2.0)
    xx = (np.arange(W, dtype=np.float32) - (W - 1) / 2.0 + rng.uniform(-0.1, 0.1) * W) / (max(H, W) / 2.0)
    rho2 = yy[:, None] ** 2 + xx[None, :] ** 2
    illum = 1.0 - p.vignetting * rho2 / 2.0
    illum += p.illumination_ripple * _smooth_noise(rng, (H, W), max(H, W) / 4.0)
    illum *= rng.uniform(0.95, 1.05)
    img *= illum[..., None]
    img[..., 2] *= 1.0 + 0.02 * rho2  # bluish corners


def _sensor_noise(rng, p: NdFeBParams, img: np.ndarray) -> np.ndarray:
    """Step 7: signal-dependent sensor noise per channel on the image clipped to [0, 1], clipped again, to uint8."""
    np.clip(img, 0.0, 1.0, out=img)
    std = np.sqrt(p.read_noise**2 + p.shot_noise * img)
    img += std * rng.standard_normal(img.shape, dtype=np.float32)
    np.clip(img, 0.0, 1.0, out=img)
    return (img * 255.0 + 0.5).astype(np.uint8)
