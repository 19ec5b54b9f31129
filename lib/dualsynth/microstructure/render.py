"""Step 3 of the generator: the brightfield micrograph drawn from the class map and the grain structure."""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from .noise import _smooth_noise, _smoothstep
from .params import ETA, MATRIX, OXIDE, NdFeBParams


def _render(rng, p: NdFeBParams, mask, grain, gb, pid, ox_dist, n_seeds):
    H, W = p.height, p.width
    d = p.grain_diameter_px
    colors = np.array([p.color_matrix, p.color_eta, p.color_oxide, p.color_nd_rich], dtype=np.float32)

    # per-(class, grain) colour table: grains (matrix and eta) get a brightness
    # factor and a slight tint (orientation contrast); one gather builds the image
    gain = (1.0 + p.grain_contrast * rng.standard_normal(n_seeds)).astype(np.float32)
    tint = (p.grain_tint * rng.standard_normal((n_seeds, 3))).astype(np.float32)
    table = np.repeat(colors[:, None, :], n_seeds, axis=1)
    for c in (MATRIX, ETA):
        table[c] = table[c] * gain[:, None] + tint
    img = table.reshape(-1, 3)[mask.astype(np.intp) * n_seeds + grain]  # (H, W, 3)
    del table

    # luminance factor: etched boundary lines, oxide cores, texture, scratches
    is_grain = mask <= ETA
    sc = p.scale
    line_w = 0.9 * max(sc, 0.6)
    lum = np.where(is_grain, 1.0 - p.boundary_darkening * np.exp(-((gb / line_w) ** 2)), 1.0).astype(np.float32)

    oxm = mask == OXIDE
    if oxm.any():
        # depth inside the particle (px); 2 px where unknown (fallback growth)
        inside = np.where(np.isfinite(ox_dist[oxm]), np.clip(-ox_dist[oxm], 0.0, None), 2.0)
        core = 1.0 - p.oxide_core_darkening * (1.0 - np.exp(-np.maximum(inside - 1.0, 0.0) / 3.0))
        n_p = int(pid.max()) + 1
        pgain = (1.0 + 0.06 * rng.standard_normal(max(n_p, 1))).astype(np.float32)
        pp = pid[oxm]
        lum[oxm] *= core * np.where(pp >= 0, pgain[np.maximum(pp, 0)], 1.0)

    # fine mottling + medium blotches
    lum *= 1.0 + p.texture_strength * 0.7 * (
        _smooth_noise(rng, (H, W), max(0.8, 1.2 * sc)) + _smooth_noise(rng, (H, W), max(1.5, 6.0 * sc))
    )

    # polishing scratches: long thin straight lines, mostly one direction
    n_scr = rng.poisson(p.scratches_per_mpx * H * W / 1e6)
    if n_scr > 0 and p.scratch_strength > 0:
        from skimage.draw import line_aa

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
            # intensity fades in and out along the scratch
            t = np.linspace(0, np.pi, ok.size)
            scr[rr[ok], cc[ok]] += (amp * val * np.sin(t))[ok]
        scr = ndi.gaussian_filter(scr, 0.6)
        lum *= 1.0 + p.scratch_strength * np.clip(scr, -1.5, 1.5)
        del scr
    img *= lum[..., None]
    del lum

    # optical PSF
    if p.psf_sigma > 0:
        psf = max(0.45, p.psf_sigma * sc)
        for c in range(3):
            img[..., c] = ndi.gaussian_filter(img[..., c], psf)

    # blue fringes just outside oxide particles
    if p.fringe_strength > 0 and oxm.any():
        outside = ox_dist  # inf far from particles
        fw = max(0.7, p.fringe_width_px * sc)
        near = (~oxm) & (outside < 0.75 * fw + 3.0 * fw)
        wf = p.fringe_strength * np.exp(-(((outside[near] - 0.75 * fw) / fw) ** 2))
        shift = np.array([-0.10, -0.03, 0.09], dtype=np.float32)
        img[near] += wf[:, None].astype(np.float32) * shift
        del outside, wf, near

    # EDF artefacts: a few soft-edged locally blurred areas
    blur_map = np.zeros((H, W), dtype=np.float32)
    if p.blur_regions_per_mpx > 0:
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
            crop = img[by0:by1, bx0:bx1]
            blurred = ndi.gaussian_filter(crop, (sigma, sigma, 0))
            blurred = blurred[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
            cur = img[y0:y1, x0:x1]
            img[y0:y1, x0:x1] = cur + m[..., None] * (blurred - cur)

    # illumination: vignetting + smooth ripple, slight warm/cool shift to the corners
    yy = (np.arange(H, dtype=np.float32) - (H - 1) / 2.0 + rng.uniform(-0.1, 0.1) * H) / (max(H, W) / 2.0)
    xx = (np.arange(W, dtype=np.float32) - (W - 1) / 2.0 + rng.uniform(-0.1, 0.1) * W) / (max(H, W) / 2.0)
    rho2 = yy[:, None] ** 2 + xx[None, :] ** 2
    illum = 1.0 - p.vignetting * rho2 / 2.0
    illum += p.illumination_ripple * _smooth_noise(rng, (H, W), max(H, W) / 4.0)
    illum *= rng.uniform(0.95, 1.05)
    img *= illum[..., None]
    img[..., 2] *= 1.0 + 0.02 * rho2  # bluish corners
    del illum, rho2

    # sensor noise (signal dependent), per channel
    np.clip(img, 0.0, 1.0, out=img)
    std = np.sqrt(p.read_noise**2 + p.shot_noise * img)
    img += std * rng.standard_normal(img.shape, dtype=np.float32)
    del std
    np.clip(img, 0.0, 1.0, out=img)
    out = (img * 255.0 + 0.5).astype(np.uint8)
    return out, blur_map
