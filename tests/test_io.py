import json
import os
import threading

import numpy as np
import pytest
from PIL import Image

from dualsynth.io import (DataError, atomic_write_json, read_image, read_json, read_mask, read_rows_csv, recover_dir,
                          write_png, write_rows_csv)


def test_read_rgb_grey_rgba_16bit(tmp_path, rng):
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert np.array_equal(read_image(tmp_path / "rgb.png"), rgb)
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 128, np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgb)
    grey = rgb[..., 0]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    assert read_image(tmp_path / "grey.png").shape == (20, 30, 1)
    assert read_image(tmp_path / "grey.png", channels=3).shape == (20, 30, 3)
    # grey stored as RGB with equal channels becomes grey exactly
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "grey3.png")
    assert np.array_equal(read_image(tmp_path / "grey3.png", channels=1)[..., 0], grey)
    # 16-bit, full range and 12-bit in a 16-bit container
    import tifffile

    g16 = (grey.astype(np.uint16) * 257)
    tifffile.imwrite(tmp_path / "g16.tif", g16)
    assert np.abs(read_image(tmp_path / "g16.tif")[..., 0].astype(int) - grey).max() <= 1
    g12 = (grey.astype(np.uint16) * 16)
    g12[0, 0] = 4095
    Image.fromarray(g12).save(tmp_path / "g12.png")
    out = read_image(tmp_path / "g12.png")
    assert out.dtype == np.uint8 and out[0, 0, 0] == 255 and out.max() == 255


def test_missing_corrupt_empty(tmp_path):
    with pytest.raises(DataError, match=r"nope\.png: file not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png: file is empty"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(DataError, match=r"corrupt\.png: not a readable image"):
        read_image(tmp_path / "corrupt.png")
    (tmp_path / "corrupt.tif").write_bytes(b"II*\x00" + b"\x00" * 30)
    with pytest.raises(DataError, match=r"corrupt\.tif: not a readable image"):
        read_image(tmp_path / "corrupt.tif")


def test_read_mask_encodings(tmp_path, ndfeb_palette, rng):
    mask = rng.integers(0, 4, (12, 9)).astype(np.uint8)
    write_png(tmp_path / "idx.png", mask)
    write_png(tmp_path / "grey.png", ndfeb_palette.index_to_grey(mask))
    write_png(tmp_path / "rgb.png", ndfeb_palette.index_to_rgb(mask))
    for name in ("idx", "grey", "rgb"):
        assert np.array_equal(read_mask(tmp_path / f"{name}.png", ndfeb_palette), mask)
    bad = ndfeb_palette.index_to_grey(mask)
    bad[0, 0] = 100
    write_png(tmp_path / "bad.png", bad)
    with pytest.raises(DataError, match=r"bad\.png.*grey levels not in the palette.*100"):
        read_mask(tmp_path / "bad.png", ndfeb_palette)


def test_atomic_json_never_partial(tmp_path):
    """A reader polling while a writer rewrites a big JSON never sees a partial file."""
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"n": -1, "data": []})
    stop = threading.Event()
    seen, errors = [], []

    def reader():
        while not stop.is_set():
            try:
                seen.append(json.loads(target.read_text())["n"])
            except Exception as e:  # a partial file would fail to parse
                errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    for n in range(30):
        atomic_write_json(target, {"n": n, "data": list(range(20000))})
    stop.set()
    t.join()
    assert not errors
    assert seen and max(seen) <= 29
    assert read_json(target)["n"] == 29
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")], "temp files left behind"


def test_atomic_write_failure_keeps_old(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert read_json(target) == {"ok": 1}
    assert os.listdir(tmp_path) == ["a.json"]


def test_unwritable_folder(tmp_path):
    if os.geteuid() == 0:
        # root ignores permissions; use a path under a regular file instead
        (tmp_path / "file").write_text("x")
        with pytest.raises(DataError, match="cannot create output folder"):
            write_png(tmp_path / "file" / "sub" / "x.png", np.zeros((2, 2), np.uint8))
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(DataError, match="not writable"):
            write_png(ro / "x.png", np.zeros((2, 2), np.uint8))


def test_read_json_not_utf8_names_file(tmp_path):
    f = tmp_path / "bad.json"
    f.write_bytes(b'{"a": "\xff\xfe"}')
    with pytest.raises(DataError, match=r"bad\.json: not valid JSON \(not UTF-8"):
        read_json(f)


def test_read_rows_csv_bad_rows_name_file_and_line(tmp_path):
    f = tmp_path / "history.csv"
    write_rows_csv(f, ("step", "loss"), [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}], int_columns=("step",))
    assert read_rows_csv(f, ("step", "loss"), int_columns=("step",)) == [{"step": 1, "loss": 0.5},
                                                                        {"step": 2, "loss": 0.25}]
    f.write_text("step,loss\n1,0.5\n2\n")  # a short row (e.g. a hand-edited or truncated file)
    with pytest.raises(DataError, match=r"history\.csv: line 3: short row, no value for column 'loss'"):
        read_rows_csv(f, ("step", "loss"), int_columns=("step",))
    f.write_text("step,loss\n1,0.5\n2,abc\n")
    with pytest.raises(DataError, match=r"history\.csv: line 3: column 'loss': 'abc' is not a number"):
        read_rows_csv(f, ("step", "loss"), int_columns=("step",))
    f.write_text("step,loss\nx,0.5\n")
    with pytest.raises(DataError, match=r"history\.csv: line 2: column 'step': 'x' is not a number"):
        read_rows_csv(f, ("step", "loss"), int_columns=("step",))


def _folder(path, complete: bool):
    path.mkdir()
    (path / "weights").write_text(path.name)
    if complete:
        (path / "done.json").write_text("{}")  # written last: marks a complete folder
    return path


def test_recover_dir_after_kill_between_renames(tmp_path):
    """replace_dir killed between its renames: ``x.old`` and a complete ``x.tmp``, no ``x`` → the tmp is put in place."""
    _folder(tmp_path / "x.old", True)
    _folder(tmp_path / "x.tmp", True)
    recover_dir(tmp_path / "x")
    assert (tmp_path / "x" / "weights").read_text() == "x.tmp"
    assert sorted(os.listdir(tmp_path)) == ["x"]


def test_recover_dir_never_promotes_an_incomplete_tmp(tmp_path):
    """With a ``complete`` check an incomplete ``x.tmp`` is dropped and the good ``x.old`` restored."""
    complete = lambda p: (p / "done.json").is_file()  # noqa: E731
    _folder(tmp_path / "x.old", True)
    _folder(tmp_path / "x.tmp", False)
    recover_dir(tmp_path / "x", complete=complete)
    assert (tmp_path / "x" / "weights").read_text() == "x.old"
    assert sorted(os.listdir(tmp_path)) == ["x"]
    # a complete tmp still wins
    os.rename(tmp_path / "x", tmp_path / "x.old")
    _folder(tmp_path / "x.tmp", True)
    recover_dir(tmp_path / "x", complete=complete)
    assert (tmp_path / "x" / "weights").read_text() == "x.tmp"
    assert sorted(os.listdir(tmp_path)) == ["x"]
