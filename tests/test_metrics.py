"""Tests for dualsynth.metrics; expected values are computed by hand in the comments."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from dualsynth.metrics import (
    confusion_matrix,
    evaluate,
    iou_per_class,
    miou,
    missing_class_iou,
    pixel_accuracy,
)

# --------------------------------------------------------------------------- fixtures
# Image A: class 2 is predicted (2 px) but absent from the ground truth.
GA = np.array(
    [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [0, 0, 1, 1],
    ]
)
PA = np.array(
    [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [0, 0, 2, 1],
        [0, 2, 1, 1],
    ]
)
# confusion A (rows truth): G0 -> P0 7, P2 1 ; G1 -> P1 7, P2 1
# IoU0 = 7 / (8 + 7 - 7) = 7/8 ; IoU1 = 7/8 ; IoU2 = 0 / (0 + 2 - 0) = 0
# Missing Class IoU A = (7/8 + 7/8) / 2 = 7/8 ; mIoU A = (7/8 + 7/8 + 0) / 3 = 7/12
# accuracy A = 14/16

# Image B: class 2 absent from both ground truth and prediction.
GB = np.array(
    [
        [0, 0, 0, 0],
        [0, 0, 0, 0],
        [1, 1, 1, 1],
        [1, 1, 1, 1],
    ]
)
PB = np.array(
    [
        [0, 0, 0, 0],
        [0, 0, 0, 1],
        [1, 1, 1, 1],
        [1, 1, 1, 1],
    ]
)
# confusion B: G0 -> P0 7, P1 1 ; G1 -> P1 8
# IoU0 = 7 / (8 + 7 - 7) = 7/8 ; IoU1 = 8 / (8 + 9 - 8) = 8/9 ; IoU2 = NaN (empty union)
# Missing Class IoU B = (7/8 + 8/9) / 2 = 127/144 ; mIoU B = (7/8 + 8/9 + 1) / 3 = 199/216
# accuracy B = 15/16

# Image C: contains classes 0 and 2, not class 1; one class-2 pixel predicted as 1.
GC = np.array(
    [
        [2, 2, 2, 2],
        [2, 2, 2, 2],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ]
)
PC = GC.copy()
PC[0, 0] = 1
# confusion C: G0 -> P0 8 ; G2 -> P1 1, P2 7
# IoU0 = 8/8 = 1 ; IoU1 = 0 / (0 + 1 - 0) = 0 ; IoU2 = 7 / (8 + 7 - 7) = 7/8
# Missing Class IoU C = (1 + 7/8) / 2 = 15/16 ; mIoU C = (1 + 0 + 7/8) / 3 = 5/8
# accuracy C = 15/16


# --------------------------------------------------------------------------- per image
def test_confusion_matrix_by_hand():
    cm = confusion_matrix(GA, PA, 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[7, 0, 1], [0, 7, 1], [0, 0, 0]])
    np.testing.assert_array_equal(confusion_matrix(GB, PB, 3), [[7, 1, 0], [0, 8, 0], [0, 0, 0]])
    np.testing.assert_array_equal(confusion_matrix(GC, PC, 3), [[8, 0, 0], [0, 0, 0], [0, 1, 7]])


def test_predicted_class_absent_from_gt():
    ious = iou_per_class(GA, PA, 3)
    np.testing.assert_allclose(ious, [7 / 8, 7 / 8, 0.0])
    # Missing Class IoU ignores class 2 but the true classes' IoU dropped from 1 to 7/8
    assert missing_class_iou(GA, PA, 3) == pytest.approx(7 / 8)
    # mIoU counts class 2 as 0
    assert miou(GA, PA, 3) == pytest.approx(7 / 12)
    assert pixel_accuracy(GA, PA) == pytest.approx(14 / 16)


def test_class_absent_from_both():
    ious = iou_per_class(GB, PB, 3)
    np.testing.assert_allclose(ious[:2], [7 / 8, 8 / 9])
    assert math.isnan(ious[2])
    assert missing_class_iou(GB, PB, 3) == pytest.approx(127 / 144)
    assert miou(GB, PB, 3) == pytest.approx(199 / 216)
    assert pixel_accuracy(GB, PB) == pytest.approx(15 / 16)


def test_missing_class_iou_counts_false_negatives_of_true_class():
    # Image C: class 1 predicted but absent, class 2 loses a pixel.
    np.testing.assert_allclose(iou_per_class(GC, PC, 3), [1.0, 0.0, 7 / 8])
    assert missing_class_iou(GC, PC, 3) == pytest.approx(15 / 16)
    assert miou(GC, PC, 3) == pytest.approx(5 / 8)


def test_perfect_prediction():
    rng = np.random.default_rng(1)
    g = rng.integers(0, 3, size=(8, 9))  # classes 0..2 out of 4: class 3 absent from both
    assert set(np.unique(g)) == {0, 1, 2}
    ious = iou_per_class(g, g.copy(), 4)
    np.testing.assert_allclose(ious[:3], 1.0)
    assert math.isnan(ious[3])
    assert miou(g, g, 4) == 1.0
    assert missing_class_iou(g, g, 4) == 1.0
    assert pixel_accuracy(g, g) == 1.0
    res = evaluate([g, g], [g, g], 4)
    assert res["accuracy"] == res["miou"] == res["miou_dataset"] == res["missing_class_iou"] == 1.0
    assert res["per_class"] == {"0": 1.0, "1": 1.0, "2": 1.0, "3": None}
    assert res["per_class_iou_dataset"] == {"0": 1.0, "1": 1.0, "2": 1.0, "3": None}


def test_accepts_bool_and_integral_float_masks():
    g = np.array([[True, False], [False, False]])
    p = np.array([[1.0, 0.0], [1.0, 0.0]])
    # G1 -> P1 1 ; G0 -> P0 2, P1 1 : IoU0 = 2/3, IoU1 = 1/2
    np.testing.assert_allclose(iou_per_class(g, p, 2), [2 / 3, 1 / 2])


# --------------------------------------------------------------------------- dataset
def test_evaluate_dataset_by_hand():
    res = evaluate([GA, GB, GC], [PA, PB, PC], 3, class_names=["matrix", "pore", "grain"])
    assert res["num_images"] == 3
    # pooled accuracy = (14 + 15 + 15) / 48
    assert res["accuracy"] == pytest.approx(44 / 48)
    # mean per-image mIoU = (7/12 + 199/216 + 5/8) / 3 = (126 + 199 + 135) / 216 / 3 = 115/162
    assert res["miou"] == pytest.approx(115 / 162)
    # mean per-image Missing Class IoU = (7/8 + 127/144 + 15/16) / 3 = (126 + 127 + 135) / 144 / 3 = 97/108
    assert res["missing_class_iou"] == pytest.approx(97 / 108)
    # per-class Missing Class IoU, only over images whose gt contains the class:
    #   matrix (A, B, C): (7/8 + 7/8 + 1) / 3 = 11/12
    #   pore   (A, B only; C's IoU1 = 0 is not averaged): (7/8 + 8/9) / 2 = 127/144
    #   grain  (C only; A's IoU2 = 0 is not averaged): 7/8
    pc = res["per_class"]
    assert pc["matrix"] == pytest.approx(11 / 12)
    assert pc["pore"] == pytest.approx(127 / 144)
    assert pc["grain"] == pytest.approx(7 / 8)
    # summed confusion (rows truth): G0 -> 22, 1, 1 ; G1 -> 0, 15, 1 ; G2 -> 0, 1, 7
    assert res["confusion"] == [[22, 1, 1], [0, 15, 1], [0, 1, 7]]
    # dataset IoU: 22 / (24 + 22 - 22) = 11/12 ; 15 / (16 + 17 - 15) = 5/6 ; 7 / (8 + 9 - 7) = 7/10
    ds = res["per_class_iou_dataset"]
    assert ds["matrix"] == pytest.approx(11 / 12)
    assert ds["pore"] == pytest.approx(5 / 6)
    assert ds["grain"] == pytest.approx(7 / 10)
    # miou_dataset = (11/12 + 5/6 + 7/10) / 3 = 49/60, differs from the mean of per-image mIoU 115/162
    assert res["miou_dataset"] == pytest.approx(49 / 60)
    assert abs(res["miou_dataset"] - res["miou"]) > 0.1

    pi = res["per_image"]
    assert [r["index"] for r in pi] == [0, 1, 2]
    assert pi[0]["iou"] == pytest.approx({"matrix": 7 / 8, "pore": 7 / 8, "grain": 0.0})
    assert pi[1]["iou"]["grain"] is None  # absent from both
    assert pi[1]["iou"]["pore"] == pytest.approx(8 / 9)
    assert pi[2]["iou"]["pore"] == 0.0  # predicted, absent from gt
    assert pi[0]["miou"] == pytest.approx(7 / 12)
    assert pi[1]["missing_class_iou"] == pytest.approx(127 / 144)
    assert pi[2]["accuracy"] == pytest.approx(15 / 16)


def test_evaluate_class_absent_from_whole_set():
    res = evaluate([GB], [PB], 3)
    assert res["per_class"]["2"] is None
    assert res["per_class_iou_dataset"]["2"] is None
    # single image: dataset mIoU = per-image mIoU = (7/8 + 8/9 + 1) / 3
    assert res["miou_dataset"] == pytest.approx(199 / 216)
    assert res["miou"] == pytest.approx(199 / 216)


def test_evaluate_json_serialisable_plain_types():
    res = evaluate(np.stack([GA, GB, GC]), np.stack([PA, PB, PC]).astype(np.uint8), 3)
    text = json.dumps(res, allow_nan=False)
    assert json.loads(text) == res

    def walk(x):
        if isinstance(x, dict):
            for k, v in x.items():
                assert type(k) is str
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        else:
            assert x is None or type(x) in (int, float, str), type(x)

    walk(res)
    # 3-D array input gives the same answer as a list of 2-D arrays
    assert res == evaluate([GA, GB, GC], [PA, PB, PC], 3)


def test_evaluate_images_of_different_sizes():
    g2 = np.zeros((2, 3), dtype=int)
    p2 = np.zeros((2, 3), dtype=int)
    res = evaluate([GA, g2], [PA, p2], 3)
    # accuracy pooled = (14 + 6) / (16 + 6)
    assert res["accuracy"] == pytest.approx(20 / 22)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "gt, pred, c, match",
    [
        (GA, PA[:3], 3, "shape mismatch"),
        (GA, PA, 2, "pred has values outside 0..1"),
        (GA + 1, PA, 2, "gt has values outside 0..1"),
        (GA, PA - 1, 3, "pred has values outside"),
        (GA, PA, 1, "num_classes must be >= 2"),
        (GA, PA, 2.5, "num_classes must be an integer"),
        (np.zeros((0, 4), int), np.zeros((0, 4), int), 3, "empty"),
        (GA + 0.5, PA, 3, "non-integral"),
        (np.array([[np.nan]]), np.array([[0]]), 3, "NaN"),
        (np.array([["a"]]), np.array([[0]]), 3, "dtype"),
    ],
)
def test_per_image_errors(gt, pred, c, match):
    with pytest.raises(ValueError, match=match):
        confusion_matrix(gt, pred, c)


def test_pixel_accuracy_errors():
    with pytest.raises(ValueError, match="shape mismatch"):
        pixel_accuracy(GA, PA.T[:2])
    with pytest.raises(ValueError, match="empty"):
        pixel_accuracy([], [])


def test_evaluate_errors():
    with pytest.raises(ValueError, match="empty input"):
        evaluate([], [], 3)
    with pytest.raises(ValueError, match="2 images but preds has 1"):
        evaluate([GA, GB], [PA], 3)
    with pytest.raises(ValueError, match=r"image 1: pred has values outside 0\.\.2"):
        evaluate([GA, GB], [PA, PB + 2], 3)
    with pytest.raises(ValueError, match=r"image 2: shape mismatch"):
        evaluate([GA, GB, GC], [PA, PB, PC[:, :3]], 3)
    with pytest.raises(ValueError, match="image 0: gt must be 2-D"):
        evaluate([GA.ravel()], [PA.ravel()], 3)
    with pytest.raises(ValueError, match="single 2-D array"):
        evaluate(GA, PA, 3)
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        evaluate([GA], [PA], 1)
    with pytest.raises(ValueError, match="class_names has 2 names for 3 classes"):
        evaluate([GA], [PA], 3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        evaluate([GA], [PA], 3, class_names=["a", "b", "a"])


# --------------------------------------------------------------------------- brute force
def _brute_force(g, p, c):
    """Per-pixel Python loops, straight from the definitions."""
    inter = [0] * c
    union = [0] * c
    in_gt = [False] * c
    correct = 0
    for gv, pv in zip(g.ravel().tolist(), p.ravel().tolist()):
        in_gt[gv] = True
        correct += gv == pv
        for k in range(c):
            if gv == k and pv == k:
                inter[k] += 1
            if gv == k or pv == k:
                union[k] += 1
    ious = [inter[k] / union[k] if union[k] else None for k in range(c)]
    mci = sum(ious[k] for k in range(c) if in_gt[k]) / sum(in_gt)
    mi = sum(1.0 if v is None else v for v in ious) / c
    return ious, mci, mi, correct / g.size, in_gt, inter, union


@pytest.mark.parametrize("seed", range(12))
def test_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    c = int(rng.integers(2, 6))
    shape = (int(rng.integers(1, 7)), int(rng.integers(1, 8)))
    # skewed class probabilities so that classes are often missing
    probs = rng.dirichlet(np.full(c, 0.4))
    g = rng.choice(c, size=shape, p=probs)
    p = np.where(rng.random(shape) < 0.6, g, rng.choice(c, size=shape, p=probs))
    ious, mci, mi, acc, _, _, _ = _brute_force(g, p, c)
    got = iou_per_class(g, p, c)
    for k in range(c):
        if ious[k] is None:
            assert math.isnan(got[k])
        else:
            assert got[k] == pytest.approx(ious[k])
    assert missing_class_iou(g, p, c) == pytest.approx(mci)
    assert miou(g, p, c) == pytest.approx(mi)
    assert pixel_accuracy(g, p) == pytest.approx(acc)


def test_evaluate_matches_brute_force():
    rng = np.random.default_rng(42)
    c, n = 4, 7
    gts, preds = [], []
    for _ in range(n):
        probs = rng.dirichlet(np.full(c, 0.3))
        g = rng.choice(c, size=(5, 6), p=probs)
        p = np.where(rng.random((5, 6)) < 0.5, g, rng.integers(0, c, size=(5, 6)))
        gts.append(g)
        preds.append(p)
    res = evaluate(gts, preds, c)
    rows = [_brute_force(g, p, c) for g, p in zip(gts, preds)]
    assert res["miou"] == pytest.approx(sum(r[2] for r in rows) / n)
    assert res["missing_class_iou"] == pytest.approx(sum(r[1] for r in rows) / n)
    correct = sum(int((g == p).sum()) for g, p in zip(gts, preds))
    assert res["accuracy"] == pytest.approx(correct / (n * 30))
    for k in range(c):
        vals = [r[0][k] for r in rows if r[4][k]]
        exp = sum(vals) / len(vals) if vals else None
        assert res["per_class"][str(k)] == pytest.approx(exp)
        inter = sum(r[5][k] for r in rows)
        union = sum(r[6][k] for r in rows)
        exp_ds = inter / union if union else None
        assert res["per_class_iou_dataset"][str(k)] == pytest.approx(exp_ds)
    for r, row in zip(res["per_image"], rows):
        assert r["miou"] == pytest.approx(row[2])
        assert [r["iou"][str(k)] for k in range(c)] == pytest.approx(row[0])


def test_does_not_import_tensorflow():
    code = "import sys, dualsynth.metrics; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
