"""Interruption, atomic writes and reproducibility (issue 7, "Reliability").

Each test here is one row of the README's fault table.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, BackgroundProcess

#: Reproducibility tolerance of U-Net metrics across two runs with the same seed (README, "Fault table"): on CPU with
#: op determinism the runs are bit-identical; the tolerance only absorbs float printing/summing differences.
METRIC_TOL = 1e-6


# --------------------------------------------------------------------------- reproducibility
def _chain_cmd(outputs: Path, experiment: str) -> list[str]:
    """The smoke chain 01 → 06 (one variant, small pool, no pre-test or figures, one epoch of the plain U-Net: the
    notebook's and the quick preset's encoder, built and traced in a fraction of ResNet18's time); run with TF op
    determinism (``DUALSYNTH_DETERMINISTIC=1`` reaches every notebook kernel and Dask worker)."""
    return [sys.executable, "-m", "dualsynth.batch", "chain", "--preset", "smoke", "--experiment", experiment,
            "--outputs-dir", str(outputs), "--stages", "01-06", "--variants", "SHQ_0", "--workers", "1",
            "--set", "pool_size=16", "--set", "pretest=false", "--set", "variants=SHQ_0,SHQ_50", "--set", "epochs=1",
            "--set", "augment_dihedral=false", "--set", "save_figures=false", "--set", "encoder=plain"]


def _repro_chains(jobs) -> dict[str, BackgroundProcess]:
    """Chains a and b, side by side, each in its own folder (once per session: ``jobs`` is ``chain_processes``)."""
    return {name: jobs.start_job(f"repro_{name}", lambda out, name=name: BackgroundProcess(
                f"chain {name}", _chain_cmd(out, name), out / f"{name}.log", env={"DUALSYNTH_DETERMINISTIC": "1"}))
            for name in ("a", "b")}


def start_early(jobs, tmp_path_factory, selected: set[str]) -> None:
    """Called by conftest when the session starts: the two chains run beside the other tests."""
    if "test_same_seed_same_outputs" in selected:
        _repro_chains(jobs)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_same_seed_same_outputs(chain_processes):
    """Two smoke chains with the same seed (run side by side) give identical patches, tiers, splits, code maps,
    synthetic pool and variant lists, and U-Net metrics equal within METRIC_TOL; each run records its versions."""
    procs = _repro_chains(chain_processes)
    for proc in procs.values():
        proc.check(timeout=900)
    a, b = (procs[name].log.parent / name for name in ("a", "b"))
    # patches: images and masks byte for byte; tiers and splits
    assert _files(a / "patches" / "images") == _files(b / "patches" / "images")
    assert _files(a / "patches" / "masks") == _files(b / "patches" / "masks")
    ma, mb = (json.loads((e / "patches" / "manifest.json").read_text()) for e in (a, b))
    assert ma["tiers"] == mb["tiers"] and ma["test"] == mb["test"]
    # the generator: code maps of the training patches and the synthetic pool, byte for byte
    with np.load(a / "pixelcnn" / "codes.npz") as ca, np.load(b / "pixelcnn" / "codes.npz") as cb:
        for k in ("train", "val"):
            np.testing.assert_array_equal(ca[k], cb[k])
    for sub in ("images", "masks", "raw"):
        assert _files(a / "synthetic" / sub) == _files(b / "synthetic" / sub), f"synthetic/{sub} differ"
    assert (a / "synthetic" / "pool.json").read_text() == (b / "synthetic" / "pool.json").read_text()
    va, vb = ((e / "variants" / "SHQ_50.json").read_text().replace(str(e), "<exp>") for e in (a, b))
    assert va == vb
    # the U-Net: metrics equal within the stated tolerance
    ra, rb = (json.loads((e / "unet" / "SHQ_0" / "seed0" / "metrics.json").read_text()) for e in (a, b))
    for k in ("accuracy", "miou", "miou_dataset", "missing_class_iou"):
        assert abs(ra[k] - rb[k]) <= METRIC_TOL, (k, ra[k], rb[k])
    # versions and the commit are recorded with every run
    rec = json.loads((a / "runs" / "run_06_unet_training-SHQ_0-seed0.json").read_text())
    for dist in ("tensorflow", "dm-sonnet", "segmentation-models", "numpy"):
        assert rec["versions"][dist], dist
    assert rec["python"] and rec["git_commit"] and rec["op_determinism"] is True


# --------------------------------------------------------------------------- atomic writes under SIGKILL
_WRITER = r"""
import sys, numpy as np
from dualsynth.io import atomic_save_npz, atomic_write_json
target, kind = sys.argv[1], sys.argv[2]
n = 0
while True:  # rewrite a big file forever; the parent kills this process with SIGKILL at a random moment
    if kind == "json":
        atomic_write_json(target, {"n": n, "data": list(range(200_000)), "complete": True})
    else:
        atomic_save_npz(target, n=np.array(n), data=np.arange(1_000_000) + n)
    n += 1
    print(n, flush=True)
"""


def _read_complete(path: Path, kind: str) -> int:
    """Read the file as a later stage would; a partial file raises."""
    if kind == "json":
        d = json.loads(path.read_text())
        assert d["complete"] and len(d["data"]) == 200_000
        return d["n"]
    with np.load(path) as z:
        n = int(z["n"])
        assert z["data"].shape == (1_000_000,) and int(z["data"][-1]) == 999_999 + n
        return n


@pytest.mark.parametrize("kind", ["json", "npz"])
def test_killed_writer_never_leaves_partial_file(tmp_path, kind):
    """A process rewriting a big JSON / npz with io.atomic_* is SIGKILLed while a reader polls the file: every read
    sees a complete version, and after the kill the file is the last complete one."""
    target = tmp_path / f"metrics.{kind}"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target), kind], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    seen = []
    try:
        for line in proc.stdout:  # each line: one more complete write
            if target.exists():
                seen.append(_read_complete(target, kind))
            if int(line) >= 4:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert seen and seen == sorted(seen)
    last = _read_complete(target, kind)
    assert last >= max(seen)
    # whatever the kill interrupted is a hidden temporary file, never the target
    assert {p.name for p in tmp_path.iterdir() if not p.name.startswith(".")} == {target.name}


# --------------------------------------------------------------------------- kill points of the trainers
class Killed(BaseException):
    """Stands for SIGKILL at a point between two writes: nothing after it runs (not caught by `except Exception`)."""


def _kill_on(monkeypatch, owner, name: str, when, before: bool = True):
    """Replace ``owner.name`` so that the call for which ``when(*args, **kw)`` is true raises Killed
    (before the real call, or after it with before=False); other calls go through.  Returns the list of kills."""
    real = getattr(owner, name)
    kills = []

    def wrapper(*args, **kw):
        hit = not kills and when(*args, **kw)
        if hit and before:
            kills.append(name)
            raise Killed(name)
        out = real(*args, **kw)
        if hit:
            kills.append(name)
            raise Killed(name)
        return out

    monkeypatch.setattr(owner, name, wrapper)
    return kills


def _stripes(n, h, w, k, seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, k, (n, 1, w))
    return np.repeat(base, h, axis=1).astype(np.int32)


@pytest.fixture(scope="module")
def prior_uninterrupted(tmp_path_factory):
    from dualsynth import pixelcnn as pc

    train, val = _stripes(24, 6, 6, 4, seed=0), _stripes(8, 6, 6, 4, seed=1)
    model = pc.make_prior("pixelcnn", 4, hidden_channels=8, num_layers=1, seed=0)
    return pc.fit_prior(model, train, val, tmp_path_factory.mktemp("prior") / "full", steps=40, batch_size=8,
                        eval_every=10, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["history", "last", "best_swap"])
def test_prior_kill_points(tmp_path, monkeypatch, point, prior_uninterrupted):
    """fit_prior killed at each point of an evaluation (history.csv written / 'last' committed / between the two
    renames of the best-folder swap) resumes to the same step count as an uninterrupted run, with a history
    without gaps or duplicates and best/ holding the lowest-NLL weights."""
    from dualsynth import io as dio
    from dualsynth import pixelcnn as pc

    train, val = _stripes(24, 6, 6, 4, seed=0), _stripes(8, 6, 6, 4, seed=1)
    kw = dict(steps=40, batch_size=8, eval_every=10, progress=False)

    def make():
        return pc.make_prior("pixelcnn", 4, hidden_channels=8, num_layers=1, seed=0)

    full = prior_uninterrupted
    ck = tmp_path / "ck"
    with monkeypatch.context() as mp:
        if point == "history":  # killed while writing history.csv of the 2nd evaluation
            kills = _kill_on(mp, dio, "write_rows_csv", lambda path, cols, rows, **_: len(rows) == 2)
        elif point == "last":  # 'last' committed at step 20, killed before best/ was replaced
            kills = _kill_on(mp, pc, "save_prior", lambda model, path, step=None: (step or 0) > 10)
        else:  # the 2nd save of best/: renamed aside, killed before best.tmp took its place
            real, kills = dio.replace_dir, []

            def replace_dir(tmp, target):
                if Path(target).name != "best" or not (Path(target) / "step.json").exists() or kills:
                    return real(tmp, target)
                os.replace(target, Path(str(target) + ".old"))
                kills.append("between renames")
                raise Killed("between renames")

            mp.setattr(dio, "replace_dir", replace_dir)
        with pytest.raises(Killed):
            pc.fit_prior(make(), train, val, ck, **kw)
        assert kills
    if point == "best_swap":
        assert not (ck / "best").exists() and (ck / "best.old").exists() and (ck / "best.tmp").exists()
    resumed = pc.fit_prior(make(), train, val, ck, **kw)
    assert resumed["final_step"] == full["final_step"] == 40
    assert [r["step"] for r in resumed["history"]] == [10, 20, 30, 40]
    best = min(resumed["history"], key=lambda r: r["val_nll"])
    assert resumed["best_step"] == best["step"]
    assert pc.evaluate_nll(pc.load_prior(ck / "best"), val) == pytest.approx(best["val_nll"], rel=1e-4)
    assert not (ck / "best.old").exists() and not (ck / "best.tmp").exists()


@pytest.mark.slow
def test_vqvae_kill_before_history_resumes_to_same_steps(tmp_path, monkeypatch):
    """train_vqvae killed after committing 'last' but before history.csv: the resume re-evaluates that step and
    ends at the same step with the same evaluations as an uninterrupted run."""
    from dualsynth import vqvae as vq

    rng = np.random.default_rng(0)
    x = rng.random((8, 16, 16, 2)).astype(np.float32)

    def make():
        import tensorflow as tf

        tf.random.set_seed(3)
        return vq.VQVAE(in_channels=2, num_embeddings=4, embedding_dim=4, num_hiddens=8, num_residual_hiddens=4,
                        num_residual_layers=1)

    kw = dict(steps=30, batch_size=4, eval_every=10, progress=False)
    full = vq.train_vqvae(make(), x, x, checkpoint_dir=tmp_path / "full", **kw)
    with monkeypatch.context() as mp:
        kills = _kill_on(mp, vq, "_write_history_csv", lambda path, rows: len(rows) == 2)
        with pytest.raises(Killed):
            vq.train_vqvae(make(), x, x, checkpoint_dir=tmp_path / "ck", **kw)
        assert kills
    assert vq.checkpoint_step(tmp_path / "ck", "last") == 20
    resumed = vq.train_vqvae(make(), x, x, checkpoint_dir=tmp_path / "ck", **kw)
    assert resumed.resumed_from_step == 20
    assert resumed.final_step == full.final_step == 30
    assert list(resumed.steps) == list(full.steps) == [10, 20, 30]
    assert vq.checkpoint_step(tmp_path / "ck", "best") == resumed.best_step


@pytest.mark.slow
def test_unet_kill_points_resume_to_same_epochs(tmp_path, monkeypatch):
    """train_unet killed (1) after committing epoch 1 but before model.h5, (2) after model.h5 but before history.csv
    of epoch 2, (3) after train_summary.json while checkpoint/ is being deleted: each restart continues, the run
    ends with the preset's 3 epochs (as uninterrupted), history.csv has each epoch once, and model.h5 holds the
    returned (best) weights."""
    import tensorflow as tf

    from dualsynth import segmentation as seg

    rng = np.random.default_rng(0)
    masks = np.zeros((6, 32, 32), np.uint8)
    masks[:, 8:20, 8:20] = 1
    imgs = (np.where(masks == 1, 190, 40) + rng.integers(0, 40, masks.shape)).astype(np.uint8)[..., None]
    train, val = (imgs[:4], masks[:4]), (imgs[4:], masks[4:])
    cfg = seg.UNetConfig(num_classes=2, in_channels=1, encoder="plain", base_filters=8, epochs=3)
    out = tmp_path / "run"
    before = tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})  # as test_segmentation.py
    try:
        with monkeypatch.context() as mp:
            kills = _kill_on(mp, seg, "_save_best_weights", lambda out_, model: True)
            with pytest.raises(Killed):
                seg.train_unet(cfg, train, val, out, progress=False, keep_checkpoint=False)
        assert kills and json.loads((out / "checkpoint" / "state.json").read_text())["epochs_done"] == 1
        assert not (out / "model.h5").exists()
        with monkeypatch.context() as mp:
            kills = _kill_on(mp, seg, "_write_history_csv", lambda path, h: len(h["epoch"]) == 2)
            with pytest.raises(Killed):
                seg.train_unet(cfg, train, val, out, progress=False, keep_checkpoint=False)
        assert kills and (out / "model.h5").exists()
        assert len((out / "history.csv").read_text().splitlines()) == 1 + 1  # epoch 2 not yet in history.csv
        with monkeypatch.context() as mp:  # checkpoint/ renamed aside, killed before it was removed
            kills = _kill_on(mp, seg.shutil, "rmtree", lambda path, **kw: str(path).endswith(".deleting")
                             and Path(path).exists())
            with pytest.raises(Killed):
                seg.train_unet(cfg, train, val, out, progress=False, keep_checkpoint=False)
            assert kills
        assert (out / "train_summary.json").exists() and not (out / "checkpoint").exists()
        done = seg.train_unet(cfg, train, val, out, progress=False, keep_checkpoint=False)
    finally:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": before})
    assert done.epochs_run == 3 and done.history["epoch"] == [1, 2, 3]
    assert [int(r.split(",")[0]) for r in (out / "history.csv").read_text().splitlines()[1:]] == [1, 2, 3]
    assert not any(p.name.startswith(".checkpoint") for p in out.iterdir())
    np.testing.assert_array_equal(seg.predict_proba(seg.load_unet(out), val[0]),
                                  seg.predict_proba(done.model, val[0]))


@pytest.mark.slow
def test_prior_folder_swap_killed_between_renames_is_finished_on_load(tmp_path, monkeypatch):
    """save_prior writes <path>.tmp, then swaps folders by two renames; killed between them, load_prior finishes the
    swap and returns the NEW weights; killed while <path>.tmp was written, the old prior stays."""
    from dualsynth import io as dio
    from dualsynth import pixelcnn as pc

    codes = _stripes(2, 6, 6, 4, seed=0)
    old, new = (pc.make_prior("pixelcnn", 4, hidden_channels=8, num_layers=1, seed=s) for s in (0, 1))
    pc.save_prior(old, tmp_path / "prior")

    def first_rename_only(tmp, target):
        os.replace(target, Path(str(target) + ".old"))
        raise Killed("between renames")

    with monkeypatch.context() as mp:
        mp.setattr(dio, "replace_dir", first_rename_only)
        with pytest.raises(Killed):
            pc.save_prior(new, tmp_path / "prior")
    assert not (tmp_path / "prior").exists()
    np.testing.assert_array_equal(pc.load_prior(tmp_path / "prior")(codes).numpy(), new(codes).numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prior"]
    with monkeypatch.context() as mp:  # killed while the weights of <path>.tmp were written
        mp.setattr(dio, "atomic_write_json", lambda *a, **k: (_ for _ in ()).throw(Killed("writing")))
        with pytest.raises(Killed):
            pc.save_prior(old, tmp_path / "prior")
    np.testing.assert_array_equal(pc.load_prior(tmp_path / "prior")(codes).numpy(), new(codes).numpy())


# --------------------------------------------------------------------------- no leakage between test and training
def _blocky_mask(rng, h, w, k, block=4):
    """Class-index mask of small blocks, so that small patches hold several classes."""
    small = rng.integers(0, k, (h // block + 1, w // block + 1))
    return np.repeat(np.repeat(small, block, 0), block, 1)[:h, :w].astype(np.uint8)


def _pairs_dataset(root: Path, kind: str, n_images: int, tiers: dict, seed: int = 0) -> Path:
    """A tiny folder dataset as users bring them (cf. ../shared/data: images/<stem> + masks/<stem>) and its YAML.

    kind: ``index`` (masks of class numbers, RGB images), ``rgb`` (colour masks, as metaldam/masks_color),
    ``grey`` (masks of palette grey levels, grey 16-bit TIFF images), ``lqfolder`` (index masks plus an LQ mask
    folder)."""
    import tifffile
    import yaml

    from dualsynth.io import write_png
    from dualsynth.palette import NDFEB_PALETTE as pal

    rng = np.random.default_rng(seed)
    for sub in ("images", "masks", "masks_lq"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        h, w = 40 + 4 * (i % 3), 48 + 8 * (i % 2)  # sizes differ a little, and are not multiples of the patch
        mask = _blocky_mask(rng, h, w, pal.num_classes)
        img = (pal.colors_array[mask] // 2 + rng.integers(0, 100, (h, w, 3))).astype(np.uint8)
        stem = f"img{i:02d}"
        if kind == "grey":
            tifffile.imwrite(root / "images" / f"{stem}.tif", (img.mean(axis=2) * 257).astype(np.uint16))
            write_png(root / "masks" / f"{stem}.png", pal.index_to_grey(mask))
        else:
            write_png(root / "images" / f"{stem}.png", img)
            write_png(root / "masks" / f"{stem}.png", pal.index_to_rgb(mask) if kind == "rgb" else mask)
        if kind == "lqfolder":
            lq = mask.copy()
            lq[::5] = 0
            write_png(root / "masks_lq" / f"{stem}.png", lq)
    (root / "images" / ".DS_Store").write_bytes(b"\0")
    (root / "images" / "._img00.png").write_bytes(b"\0\5\26\7")  # a macOS resource fork: ignored
    source = {"kind": "pairs", "images": str(root / "images"), "masks": str(root / "masks"),
              "mask_encoding": {"index": "index", "rgb": "rgb", "grey": "auto", "lqfolder": "index"}[kind],
              "lq_masks": "folder" if kind == "lqfolder" else "degrade", "test_image_fraction": 0.3}
    if kind == "lqfolder":
        source["masks_lq"] = str(root / "masks_lq")
    data = {"name": f"tiny_{kind}", "channels": 1 if kind == "grey" else 3, "classes": pal.to_dict(),
            "source": source, "tiers": tiers}
    path = root / "data.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _generated_dataset(root: Path, tiers: dict) -> Path:
    """The embedded default, shrunk (a 1024 × 768 image at the paper's scale: at 16 px patches 64 × 48 px)."""
    import yaml

    data = yaml.safe_load((ROOT / "params" / "data" / "ndfeb_default.yaml").read_text())
    data["source"].update(width=1024, height=768)
    data["tiers"] = tiers
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    return root / "data.yaml"


def _assert_no_leakage(out: Path, patch_size: int) -> None:
    """What 01 wrote keeps test and training apart: every patch of every source is recorded under its own id; no
    test patch id, patch content or held-out source image is in any training or validation split."""
    import hashlib

    m = json.loads((out / "manifest.json").read_text())
    names = [s["name"] for s in m["sources"]]
    paths = [s["path"] for s in m["sources"]]
    assert len(set(names)) == len(names) and len(set(paths)) == len(paths), "a source image is listed twice"
    cut = sum((s["height"] // patch_size) * (s["width"] // patch_size) for s in m["sources"])
    assert len(m["patches"]) == cut, "patch ids collided (fewer recorded than cut)"
    cells = {(r["source"], r["y"], r["x"]) for r in m["patches"].values()}
    assert len(cells) == cut
    test = [e["id"] for e in m["test"]]
    assert test and len(set(test)) == len(test), "a test patch is listed twice"
    held_out = {s["name"] for s in m["sources"] if s["role"] == "test"}

    def content(i):
        return hashlib.sha256((out / m["patches"][i]["image"]).read_bytes()).hexdigest()

    test_content = {content(i) for i in test}
    seen = set()
    for tier, splits in m["tiers"].items():
        tr, va = [e["id"] for e in splits["train"]], [e["id"] for e in splits["val"]]
        for split, ids in (("train", tr), ("val", va)):
            assert len(set(ids)) == len(ids), f"a patch is listed twice in {tier} {split}"
            assert not set(ids) & set(test), f"a test patch is in {tier} {split}"
            assert not {m["patches"][i]["source"] for i in ids} & held_out, \
                f"a patch of a held-out test image is in {tier} {split}"
            assert not {content(i) for i in ids} & test_content, f"a test patch's pixels are in {tier} {split}"
            assert all(m["patches"][i]["used"] and m["patches"][i]["drop_reason"] is None for i in ids)
        assert not set(tr) & set(va), f"{tier}: a patch in both train and val"
        seen |= set(tr) | set(va)
    for i in test:  # test patches: of held-out images, or of training images but outside every tier
        assert m["patches"][i]["source"] in held_out or i not in seen


#: (data kind, tiers) — each kind the project reads, with and without held-out images
_LEAK_KINDS = {
    "generated": {"small": [2, 1], "big": [4, 2], "test_main": 2, "test_extra": 3},
    "index": {"small": [2, 1], "big": [4, 2], "test_main": 1, "test_extra": 2},
    "rgb": {"small": [2, 1], "big": [4, 2], "test_main": 0, "test_extra": 3},
    "grey": {"small": [2, 1], "big": [3, 2], "test_main": 2, "test_extra": 2},
    "lqfolder": {"small": [1, 1], "big": [3, 2], "test_main": 3, "test_extra": 0},
}


@pytest.mark.parametrize("kind", sorted(_LEAK_KINDS))
def test_no_test_patch_or_held_out_image_in_training(tmp_path, kind):
    """Issue 15 item 1: for every data kind (embedded default; folders with index, RGB colour and grey-level masks,
    TIFF images, an LQ mask folder; with held-out images, without, and test patches from the training images) and
    12 seeds, no test patch id, test patch content or held-out source image is in any training or validation
    split, and no patch id collides."""
    from dualsynth.config import load_data_config
    from dualsynth.patching import prepare_dataset

    tiers = _LEAK_KINDS[kind]
    path = (_generated_dataset(tmp_path / "data", tiers) if kind == "generated"
            else _pairs_dataset(tmp_path / "data", kind, n_images=7, tiers=tiers))
    cfg = load_data_config(path)
    for seed in range(12):
        out = tmp_path / f"seed{seed}"
        prepare_dataset(cfg, out, patch_size=16, seed=seed, progress=False)
        _assert_no_leakage(out, 16)


def test_same_stem_twice_is_refused_not_leaked(tmp_path):
    """The case of issue 15 item 1: images/img00.png and images/img00.tif (one mask img00.png) — refused naming both
    files, for every seed, instead of pairing the .tif with the .png's mask and colliding patch ids."""
    import tifffile

    from dualsynth.config import load_data_config
    from dualsynth.io import DataError, read_image
    from dualsynth.patching import prepare_dataset

    path = _pairs_dataset(tmp_path / "data", "index", n_images=5, tiers=_LEAK_KINDS["index"])
    tifffile.imwrite(tmp_path / "data" / "images" / "img00.tif", read_image(tmp_path / "data" / "images" / "img01.png"))
    cfg = load_data_config(path)
    for seed in range(3):
        with pytest.raises(DataError, match=r"img00\.png and .*img00\.tif are two images with the same name "
                                            r"'img00'.*Rename or remove one"):
            prepare_dataset(cfg, tmp_path / "out", patch_size=16, seed=seed, progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.realdata
@pytest.mark.parametrize("name,masks,encoding", [
    ("nasa_super", "masks", "index"),
    pytest.param("metaldam", "masks_color", "rgb", marks=pytest.mark.slow),  # 42 RGB masks of 1024 px: ~7 s a seed
])
def test_no_leakage_on_the_shared_datasets(tmp_path, name, masks, encoding):
    """The same check on the real datasets in ../shared/data (index masks; metaldam's RGB colour masks)."""
    import yaml

    from conftest import shared_dataset
    from dualsynth.config import load_data_config
    from dualsynth.patching import prepare_dataset

    folder = shared_dataset(name)
    data = yaml.safe_load((ROOT / "params" / "data" / f"{name}.yaml").read_text())
    data["source"].update(images=str(folder / "images"), masks=str(folder / masks), mask_encoding=encoding,
                          lq_masks="hq")  # (the LQ error model takes seconds per image; splits do not depend on it)
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(data))
    cfg = load_data_config(tmp_path / "d.yaml")
    for seed in ((0, 1) if name == "nasa_super" else (0,)):
        prepare_dataset(cfg, tmp_path / f"s{seed}", patch_size=128, seed=seed, progress=False)
        _assert_no_leakage(tmp_path / f"s{seed}", 128)


def test_leakage_check_catches_a_leak(tmp_path, monkeypatch):
    """The check above is not vacuous: a test patch slipped into BMQ train, or two sources of one name (the
    duplicate-stem case, handed over directly), are caught."""
    from dualsynth import patching
    from dualsynth.config import load_data_config
    from dualsynth.io import DataError

    cfg = load_data_config(_pairs_dataset(tmp_path / "data", "index", n_images=5, tiers=_LEAK_KINDS["index"]))
    real = patching.assign_tiers

    def leaky(*args, **kw):
        plan = real(*args, **kw)
        plan["tiers"]["BMQ"]["train"].append(dict(plan["test"][0]))
        return plan

    monkeypatch.setattr(patching, "assign_tiers", leaky)
    patching.prepare_dataset(cfg, tmp_path / "leak", patch_size=16, seed=0, progress=False)
    with pytest.raises(AssertionError, match="a test patch is in BMQ train"):
        _assert_no_leakage(tmp_path / "leak", 16)
    monkeypatch.setattr(patching, "assign_tiers", real)
    srcs = patching.load_sources(cfg, 16, 0)
    srcs[1].name = srcs[0].name  # as img00.png + img00.tif were read before issue 15
    with pytest.raises(DataError, match=r"two source images with the same name 'img00'"):
        patching.prepare_dataset(cfg, tmp_path / "dup", patch_size=16, seed=0, progress=False, sources=srcs)


@pytest.mark.slow
def test_train_seconds_after_resume_count_earlier_sessions(tmp_path, monkeypatch, no_grappler):
    """Issue 15 item 12: a U-Net run killed after epoch 1 and resumed reports the time of both sessions (this one
    plus the earlier epochs' rows), not only the resumed part.  Epoch 1's recorded time is set to 500 s so that no
    model-building time of the second session can make up for it."""
    from dualsynth import segmentation as seg
    from conftest import squares

    imgs, masks = squares(6, seed=0)
    cfg = seg.UNetConfig(num_classes=2, in_channels=1, encoder="plain", base_filters=8, epochs=2)
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        _kill_on(mp, seg, "_save_best_weights", lambda out_, model: True, before=False)
        with pytest.raises(Killed):
            seg.train_unet(cfg, (imgs[:4], masks[:4]), (imgs[4:], masks[4:]), out, progress=False)
    state_file = out / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["epochs_done"] == 1
    state["history"]["seconds"][0] = 500.0
    state_file.write_text(json.dumps(state))
    done = seg.train_unet(cfg, (imgs[:4], masks[:4]), (imgs[4:], masks[4:]), out, progress=False)
    assert done.resumed_from == 1 and done.epochs_run == 2
    assert done.seconds >= 500.0 + done.history["seconds"][1]
