"""Drawing the test patches and the small/big sets, and the four quality tiers made of them (the paper's Table 1)."""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from .patches import PatchingError

__all__ = ["TIERS", "assign_tiers"]

TIERS = ("SHQ", "SLQ", "BLQ", "BMQ")


def assign_tiers(train_ids: Sequence[str], test_ids: Sequence[str], spec, seed: int) -> dict[str, Any]:
    """Draw test patches and the small/big sets; return tiers, test and unused ids.

    ``train_ids``: kept patches of training images; ``test_ids``: kept patches
    of held-out images.  Deterministic given ``seed`` and the id order.
    """
    rng = np.random.default_rng(seed)
    pool = [train_ids[i] for i in rng.permutation(len(train_ids))]
    n_small, n_big = sum(spec.small), sum(spec.big)
    need = spec.test_main + n_big
    if len(pool) < need:
        raise PatchingError(
            f"tiers need {need} patches from the training image(s) ({spec.test_main} test + BLQ/BMQ "
            f"{spec.big[0]} train + {spec.big[1]} val), but only {len(pool)} patches are left after filtering; "
            f"lower tiers.big/tiers.small/tiers.test_main in the data YAML, use a smaller patch_size, or add images"
        )
    if len(test_ids) < spec.test_extra:
        raise PatchingError(
            f"tiers.test_extra={spec.test_extra} but the held-out images give only {len(test_ids)} patches "
            f"after filtering; lower tiers.test_extra or hold out more images"
        )
    test_main = pool[: spec.test_main]
    small = pool[spec.test_main : spec.test_main + n_small]
    rest = pool[spec.test_main + n_small : spec.test_main + n_big]
    unused = pool[spec.test_main + n_big :]
    small_train, small_val = small[: spec.small[0]], small[spec.small[0] :]
    extra_train = spec.big[0] - spec.small[0]
    big_train = small_train + rest[:extra_train]
    big_val = small_val + rest[extra_train:]
    test_extra = [test_ids[i] for i in sorted(rng.choice(len(test_ids), size=spec.test_extra, replace=False))] if spec.test_extra else []
    small_set = set(small)

    def entries(ids: Iterable[str], mask_of) -> list[dict[str, str]]:
        return [{"id": i, "mask": mask_of(i)} for i in ids]

    tiers = {
        "SHQ": {"train": entries(small_train, lambda i: "hq"), "val": entries(small_val, lambda i: "hq")},
        "SLQ": {"train": entries(small_train, lambda i: "lq"), "val": entries(small_val, lambda i: "lq")},
        "BLQ": {"train": entries(big_train, lambda i: "lq"), "val": entries(big_val, lambda i: "lq")},
        "BMQ": {
            "train": entries(big_train, lambda i: "hq" if i in small_set else "lq"),
            "val": entries(big_val, lambda i: "hq" if i in small_set else "lq"),
        },
    }
    test = entries(test_main + test_extra, lambda i: "hq")
    chosen = set(test_extra)
    unused += [i for i in test_ids if i not in chosen]
    return {"tiers": tiers, "test": test, "unused": unused}
