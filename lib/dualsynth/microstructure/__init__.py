"""Parametric synthetic brightfield micrograph of a sintered Nd2Fe14B (NdFeB) magnet.

The real image used in the paper is not public, so the project's default data is
made here, the way parametric microstructure models are usually built:

1. **Grains** - a Voronoi tessellation of jittered-lattice seed points, evaluated
   on smoothly *perturbed* pixel coordinates (a random, smooth displacement
   field), so grain boundaries are gently curved instead of straight polygons.
   One KD-tree query (k=3 nearest seeds) per pixel gives the grain label, the
   distance to the nearest grain boundary (to the bisector of the two nearest
   seeds) and a triple-junction proximity (distance to the second bisector).
2. **Phases** - placed on top of the grain structure, each by selecting
   *exactly* the target number of pixels with the lowest value of a
   phase-specific score (a quantile threshold), so class fractions are hit
   almost exactly for any seed and any image size:

   * ``oxide``: rounded particles (log-normal radii, noisy outline) centred
     mostly on triple junctions and grain boundaries;
   * ``eta``: irregular blobs from a low-frequency noise field mixed with a
     per-grain random value (blobs partly follow grain boundaries);
   * ``nd_rich``: thin films along grain boundaries (width varies per boundary
     and smoothly along it, missing on some boundaries) plus small pockets at
     triple junctions;
   * ``matrix``: everything else (the Nd2Fe14B grains).

3. **Rendering** - brightfield colours per phase, grain-to-grain brightness
   variation (orientation contrast), faint etched grain-boundary lines, fine
   mottling and polishing scratches, darker cores in oxides, an optical PSF
   blur, blue colour fringes just outside oxide particles, extended-depth-of-
   focus (EDF) artefacts (a few soft-edged locally blurred areas), a smooth
   illumination gradient (vignetting) and signal-dependent sensor noise.

4. **Masks** - ``mask_hq`` is the exact class map used for drawing;
   ``mask_lq`` is made from it by :func:`degrade_mask`, a generic model of the
   errors of a segmentation *model* (over-segmentation at edges, wrong labels on
   boundary pixels, small spurious objects, occasional large mislabelled
   regions). :func:`degrade_mask` works on any index mask.

Pixel-size details (PSF, fringes, texture grain, boundary roughness, LQ dilation)
scale with ``grain_diameter_px / 42`` (``NdFeBParams.length_scale``), so an image
made with smaller grains looks like a downscaled default image.

Everything is driven by ``np.random.default_rng`` streams derived from the seed
(no global random state), so results are fully deterministic.

Layout: :mod:`.params` (classes, :class:`Micrograph`, :class:`NdFeBParams`), :mod:`.noise` (random fields and
exact-count pixel selection), :mod:`.geometry` (steps 1–2: grains and phases), :mod:`.render` (step 3),
:mod:`.degrade` (step 4, :func:`degrade_mask`); :func:`generate_ndfeb` here runs them in order.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .degrade import degrade_mask
from .geometry import _grain_seeds, _oxide_score, _phases, _voronoi  # noqa: F401  (tests use _voronoi)
from .noise import _select_lowest, _smooth_noise, _smoothstep, _upsample_linear, colorize_mask  # noqa: F401
from .params import (CLASS_COLORS, CLASS_NAMES, ETA, MATRIX, ND_RICH, OXIDE, TARGET_FRACTIONS,  # noqa: F401
                     Micrograph, NdFeBParams)
from .render import _render

__all__ = [
    "CLASS_NAMES",
    "TARGET_FRACTIONS",
    "CLASS_COLORS",
    "Micrograph",
    "NdFeBParams",
    "generate_ndfeb",
    "degrade_mask",
    "colorize_mask",
]


def generate_ndfeb(seed: int = 0, params: NdFeBParams | None = None, **overrides) -> Micrograph:
    """Generate a synthetic brightfield EDF micrograph of a sintered NdFeB magnet.

    Parameters
    ----------
    seed : integer seed; the output is a deterministic function of ``seed`` and
        the parameters.
    params : :class:`NdFeBParams` (defaults if ``None``).
    **overrides : any :class:`NdFeBParams` field, e.g. ``width=512, height=512``.

    Returns
    -------
    :class:`Micrograph` with ``image`` (uint8 RGB), ``mask_hq`` (exact class map),
    ``mask_lq`` (degraded copy, see :func:`degrade_mask`) and ``blur_map``.
    """
    p = params if params is not None else NdFeBParams()
    if overrides:
        p = dataclasses.replace(p, **overrides)
    if p.width < 8 or p.height < 8:
        raise ValueError("image must be at least 8 x 8 pixels")
    if p.frac_eta + p.frac_oxide + p.frac_nd_rich >= 1.0:
        raise ValueError("phase fractions must sum to less than 1")

    ss = np.random.SeedSequence(int(seed))
    geo_ss, phase_ss, render_ss, lq_ss = ss.spawn(4)
    grain, gb, tj, s2, n_seeds = _voronoi(np.random.default_rng(geo_ss), p)
    mask, pid, ox_dist = _phases(np.random.default_rng(phase_ss), p, grain, gb, tj, s2, n_seeds)
    del tj, s2
    image, blur_map = _render(np.random.default_rng(render_ss), p, mask, grain, gb, pid, ox_dist, n_seeds)
    del grain, gb, pid, ox_dist
    mask_lq = degrade_mask(
        mask,
        seed=int(lq_ss.generate_state(1)[0]),
        error_rate=p.lq_error_rate,
        num_classes=len(CLASS_NAMES),
        background=MATRIX,
        large_regions_per_mpx=p.lq_large_regions_per_mpx,
        dilation_share=p.lq_dilation_share,
        boundary_share=p.lq_boundary_share,
        spurious_share=p.lq_spurious_share,
        max_dilation_px=max(1.0, p.lq_max_dilation_px * p.scale),
        spurious_radius=(1, max(1, int(round(3 * p.scale)))),
    )
    return Micrograph(image=image, mask_hq=mask, mask_lq=mask_lq, seed=int(seed), blur_map=blur_map, params=p)
