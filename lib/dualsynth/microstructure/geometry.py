"""Steps 1 and 2 of the generator: the perturbed Voronoi grains, then the phases placed on them (exact pixel counts)."""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from scipy.special import ndtr

from .noise import _select_lowest, _smooth_noise
from .params import ETA, ND_RICH, OXIDE, NdFeBParams


def _grain_seeds(rng: np.random.Generator, p: NdFeBParams) -> np.ndarray:
    """Jittered hexagonal lattice of grain seeds covering the image plus a margin.

    Returns (N, 2) float array of (y, x) in the *stretched* Voronoi space
    (x divided by ``grain_aspect``).
    """
    d = p.grain_diameter_px
    # a hexagonal cell of area A = pi d^2 / 4 has lattice spacing a with A = sqrt(3)/2 a^2;
    # dropped seeds enlarge the mean cell, so compensate.
    keep = 1.0 - p.grain_drop_fraction
    area = math.pi * d * d / 4.0 * keep
    a = math.sqrt(area * 2.0 / math.sqrt(3.0))
    dy = a * math.sqrt(3.0) / 2.0
    margin = 2.0 * d
    h = p.height + 2 * margin
    w = p.width / p.grain_aspect + 2 * margin
    ny = int(math.ceil(h / dy)) + 1
    nx = int(math.ceil(w / a)) + 1
    jj, ii = np.meshgrid(np.arange(nx), np.arange(ny))
    ys = ii * dy - margin
    xs = jj * a + (ii % 2) * (a / 2.0) - margin
    pts = np.stack([ys.ravel(), xs.ravel()], axis=1).astype(np.float64)
    pts += rng.uniform(-0.5, 0.5, pts.shape) * p.grain_jitter * a
    pts = pts[rng.random(len(pts)) >= p.grain_drop_fraction]
    return pts


def _voronoi(rng: np.random.Generator, p: NdFeBParams):
    """Perturbed Voronoi tessellation.

    Returns
    -------
    grain : int32 (H, W) grain label
    gb : float32 (H, W) distance (px) to the nearest grain boundary
    tj : float32 (H, W) distance to the second-nearest boundary (small near
        triple junctions)
    s2 : int32 (H, W) label of the neighbouring grain across the nearest boundary
    """
    H, W = p.height, p.width
    d = p.grain_diameter_px
    seeds = _grain_seeds(rng, p)
    tree = cKDTree(seeds)

    warp = p.boundary_warp * d
    wy = _smooth_noise(rng, (H, W), 0.9 * d) * warp
    wx = _smooth_noise(rng, (H, W), 0.9 * d) * warp
    if p.boundary_roughness_px > 0:
        rough = p.boundary_roughness_px * p.scale
        wy += _smooth_noise(rng, (H, W), max(1.0, 2.5 * p.scale)) * rough
        wx += _smooth_noise(rng, (H, W), max(1.0, 2.5 * p.scale)) * rough

    grain = np.empty((H, W), dtype=np.int32)
    s2 = np.empty((H, W), dtype=np.int32)
    gb = np.empty((H, W), dtype=np.float32)
    tj = np.empty((H, W), dtype=np.float32)
    rows = max(1, 600_000 // max(W, 1))
    seed_y = np.ascontiguousarray(seeds[:, 0], dtype=np.float32)
    seed_x = np.ascontiguousarray(seeds[:, 1], dtype=np.float32)
    xs = np.arange(W, dtype=np.float64)
    for r0 in range(0, H, rows):
        r1 = min(H, r0 + rows)
        yy = (np.arange(r0, r1, dtype=np.float64)[:, None] + wy[r0:r1]).ravel()
        xx = ((xs[None, :] + wx[r0:r1]) / p.grain_aspect).ravel()
        q = np.stack([yy, xx], axis=1)
        dist, idx = tree.query(q, k=3, workers=p.workers)
        # distance to the bisector between seed 1 and seed j:
        # (|q - sj|^2 - |q - s1|^2) / (2 |sj - s1|)
        d2 = dist * dist
        sy, sx = seed_y[idx], seed_x[idx]  # (n, 3)
        sep12 = np.hypot(sy[:, 1] - sy[:, 0], sx[:, 1] - sx[:, 0])
        sep13 = np.hypot(sy[:, 2] - sy[:, 0], sx[:, 2] - sx[:, 0])
        b12 = ((d2[:, 1] - d2[:, 0]) / (2.0 * sep12)).astype(np.float32)
        b13 = ((d2[:, 2] - d2[:, 0]) / (2.0 * sep13)).astype(np.float32)
        grain[r0:r1] = idx[:, 0].reshape(r1 - r0, W)
        s2[r0:r1] = idx[:, 1].reshape(r1 - r0, W)
        gb[r0:r1] = b12.reshape(r1 - r0, W)
        tj[r0:r1] = np.maximum(b12, b13).reshape(r1 - r0, W)
    return grain, gb, tj, s2, len(seeds)


def _oxide_score(rng, p: NdFeBParams, gb, tj, n_target_px):
    """Oxide particle field: min over particles of (distance / radius), noisy.

    Returns (score, particle_id); pixels far from any particle get +inf.
    """
    H, W = p.height, p.width
    d = p.grain_diameter_px
    r_med = p.oxide_radius * d
    sig = p.oxide_radius_sigma
    mean_area = math.pi * r_med**2 * math.exp(2 * sig**2)
    n = max(1, int(round(1.05 * n_target_px / mean_area)))
    radii = r_med * np.exp(sig * rng.standard_normal(n))
    radii = np.clip(radii, 1.5, 4.0 * r_med)

    # centres: triple junctions, grain boundaries, anywhere
    u = rng.random(n)
    kind = np.where(u < p.oxide_at_junctions, 0, np.where(u < p.oxide_at_junctions + p.oxide_at_boundaries, 1, 2))
    centres = np.empty((n, 2), dtype=np.int64)
    # sample candidate positions on a sparse grid to stay cheap at full size
    step = 2
    tj_s = tj[::step, ::step]
    gb_s = gb[::step, ::step]
    pools = [
        np.flatnonzero(tj_s.ravel() < 1.5),
        np.flatnonzero(gb_s.ravel() < 1.0),
        None,
    ]
    ws = tj_s.shape[1]
    for k, pool in enumerate(pools):
        sel = np.flatnonzero(kind == k)
        if sel.size == 0:
            continue
        if pool is None or pool.size == 0:
            centres[sel, 0] = rng.integers(0, H, sel.size)
            centres[sel, 1] = rng.integers(0, W, sel.size)
        else:
            pick = pool[rng.integers(0, pool.size, sel.size)]
            centres[sel, 0] = (pick // ws) * step
            centres[sel, 1] = (pick % ws) * step

    score = np.full((H, W), np.inf, dtype=np.float32)
    pid = np.full((H, W), -1, dtype=np.int32)
    shape_noise = _smooth_noise(rng, (H, W), max(2.5, 0.6 * r_med)) * p.oxide_shape_noise
    # elongation / orientation per particle (slightly elliptical particles)
    ecc = np.exp(0.18 * rng.standard_normal(n))
    ang = rng.uniform(0, np.pi, n)
    reach = 2.2
    for i in range(n):
        r = radii[i]
        cy, cx = centres[i]
        R = int(math.ceil(reach * r * max(ecc[i], 1 / ecc[i]))) + 1
        y0, y1 = max(0, cy - R), min(H, cy + R + 1)
        x0, x1 = max(0, cx - R), min(W, cx + R + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
        xx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
        c, s = math.cos(ang[i]), math.sin(ang[i])
        u_ = (c * xx + s * yy) / ecc[i]
        v_ = (-s * xx + c * yy) * ecc[i]
        val = np.sqrt(u_ * u_ + v_ * v_) / r + shape_noise[y0:y1, x0:x1]
        win = score[y0:y1, x0:x1]
        better = val < win
        win[better] = val[better]
        pid[y0:y1, x0:x1][better] = i
    return score, pid, radii.astype(np.float32)


def _phases(rng, p: NdFeBParams, grain, gb, tj, s2, n_seeds):
    """Class map from the grain structure (exact target pixel counts)."""
    H, W = p.height, p.width
    N = H * W
    d = p.grain_diameter_px
    k_ox = int(round(p.frac_oxide * N))
    k_eta = int(round(p.frac_eta * N))
    k_nd = int(round(p.frac_nd_rich * N))

    mask = np.zeros((H, W), dtype=np.uint8)

    # oxide: rounded particles
    ox_score, pid, radii = _oxide_score(rng, p, gb, tj, k_ox)
    ox = _select_lowest(ox_score, np.isfinite(ox_score), k_ox)
    ox_t = float(ox_score[ox].max()) if ox.any() else 1.0
    if ox.sum() < k_ox:  # not enough particle area (tiny images): grow by distance
        extra = ndi.distance_transform_edt(~ox).astype(np.float32)
        ox |= _select_lowest(extra, ~ox, k_ox - int(ox.sum()))
    mask[ox] = OXIDE

    # eta: irregular blobs, partly following grains
    grain_val = rng.standard_normal(n_seeds).astype(np.float32)
    eta_score = -(
        _smooth_noise(rng, (H, W), p.eta_scale * d)
        + p.eta_grain_weight * grain_val[grain]
        + 0.3 * _smooth_noise(rng, (H, W), 0.2 * d)
    )
    eta = _select_lowest(eta_score, ~ox, k_eta)
    mask[eta] = ETA
    del eta_score

    # Nd-rich: pockets at triple junctions (their own share of the area) ...
    allowed = ~(ox | eta)
    k_pocket = int(round(p.pocket_share * k_nd))
    pocket_score = tj * np.exp(-0.35 * _smooth_noise(rng, (H, W), 0.4 * d))
    nd = _select_lowest(pocket_score, allowed, k_pocket)
    del pocket_score
    # ... and films along grain boundaries.  Score = (distance to the boundary
    # beyond a minimum half width, relative to a width varying smoothly along
    # the boundary) + a per-boundary penalty; the quantile threshold then gives
    # films to the boundaries with the lowest penalty, each at least a line.
    bval = rng.standard_normal(n_seeds).astype(np.float32)
    u = ndtr((bval[grain] + bval[s2]) * np.float32(1.0 / math.sqrt(2.0)))  # one value per boundary
    width = np.exp(p.film_width_sigma * _smooth_noise(rng, (H, W), 0.7 * d))
    film_score = np.maximum(gb - p.film_min_half_width_px, 0.0) / width
    film_score += np.float32(p.film_selectivity * p.scale) * u
    del u, width
    nd |= _select_lowest(film_score, allowed & ~nd, k_nd - int(nd.sum()))
    del film_score
    mask[nd] = ND_RICH
    # approximate signed distance (px) to the oxide outline, from the particle
    # score (score = r / radius + noise; the outline is at score == ox_t)
    rad = np.where(pid >= 0, radii[np.maximum(pid, 0)], 0.0).astype(np.float32)
    fin = np.isfinite(ox_score)
    ox_dist = np.full(ox_score.shape, np.inf, dtype=np.float32)
    ox_dist[fin] = (ox_score[fin] - ox_t) * rad[fin]
    return mask, pid, ox_dist
