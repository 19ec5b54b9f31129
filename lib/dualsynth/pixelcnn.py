"""Compatibility name of :mod:`dualsynth.prior` (the PixelCNN priors were one module before they became a package).

Every name the old module defined -- public, and the private ones that tests and
benchmarks use -- is re-exported, so ``from dualsynth import pixelcnn`` and
``from dualsynth.pixelcnn import fit_prior`` keep working.  The conventions are
documented in :mod:`dualsynth.prior` and its modules (``model``, ``layers``,
``training``, ``sampling``, ``engines``, ``conditioning``).

Setting an attribute here (``monkeypatch.setattr(pixelcnn, "save_prior", f)``)
also sets it in the ``dualsynth.prior`` modules that use that object, so patching
through the old name still reaches the code that calls it.
"""
from __future__ import annotations

from ._shim import forward_writes
from .prior import __all__ as _prior_all
from .prior import conditioning as _conditioning
from .prior import engines as _engines
from .prior import layers as _layers
from .prior import model as _model
from .prior import sampling as _sampling
from .prior import training as _training
from .prior.conditioning import (RARE_FRACTION, ConditionSet, check_condition, draw_conditions,  # noqa: F401
                                 load_conditions, rare_classes, save_conditions)
from .prior.engines import (_ENGINES, _GatedCachedEngine, _PlainCachedEngine, _put_column,  # noqa: F401
                            _row_patch, _WindowEngine)
from .prior.layers import (_check_int, _check_odd_kernel, _Conv, _gate, _GatedLayer, _masked_kernel,  # noqa: F401
                           _ResidualBlock, _Seeds)
from .prior.model import (DEFAULT_FIRST_KERNEL, DEFAULT_GATED, DEFAULT_GATED_HIDDEN,  # noqa: F401
                          DEFAULT_GATED_LAYERS, DEFAULT_KERNEL, DEFAULT_PLAIN, DEFAULT_PLAIN_BLOCKS,
                          DEFAULT_PLAIN_HIDDEN, DEFAULT_PLAIN_LAYERS, PRIOR_KINDS, GatedPixelCNN, PixelCNN,
                          ReceptiveField, _cached, _PriorBase, current_config, make_prior, receptive_field)
from .prior.sampling import (_NOISE_FNS, DEFAULT_SAMPLE_BATCH, FAST_METHODS, _base_seed,  # noqa: F401
                             _check_sampling_args, _choose, _graph_sampler, _gumbel, _noise_table,
                             _python_sampler, sample_fast, sample_naive)
from .prior.training import (_CONFIG, _WEIGHTS, TrainHistory, _check_codes, _complete_prior,  # noqa: F401
                             _eval_fn, _nll_sum, _saved_step, evaluate_nll, fit_prior, load_prior, nats_to_bits,
                             save_prior, train_prior)

__all__ = list(_prior_all)

# monkeypatching through this old path reaches the submodules
forward_writes(__name__, (_model, _layers, _training, _sampling, _engines, _conditioning))
