"""The one checkpointing routine (``dualsynth.checkpoint``) on a fake training loop -- no TensorFlow.

The fake loop's "model" is one number ``w`` that grows by 0.5 per step; the validation score ``(w - 3)²`` is lowest
at step 6, so the best row is neither the first nor the last.  Its state and best weights are JSON files written
atomically, its history a CSV through ``dualsynth.io``: the same shapes as the three real trainers.
"""
from __future__ import annotations

import json
import math

import pytest

from dualsynth import io as dio
from dualsynth.checkpoint import COMMIT_ORDER, ConfigMismatch, RunFolder, TrainingDiverged, check_config

COLUMNS = ("step", "loss", "val")
EVAL_EVERY = 2


class Killed(BaseException):
    """Stands for SIGKILL between two writes (not caught by ``except Exception``)."""


def _val(w: float) -> float:
    return (w - 3.0) ** 2


def _run(folder, model: dict, log: list, kill: tuple[str, int] | None = None, reset=None) -> RunFolder:
    """A RunFolder whose hooks write ``last.json`` / ``best.json`` / ``history.csv`` and log each write; ``kill``
    = (file, step): raise Killed instead of writing that file at that step."""

    def hook(name, write):
        def call(step, *args):
            if kill == (name, step):
                raise Killed(f"{name} at {step}")
            log.append((name, step))
            write(step, *args)
        return call

    def history_step(rows):
        return int(rows[-1]["step"]) if rows else 0

    write_history = hook("history", lambda step, path, rows: dio.write_rows_csv(path, COLUMNS, rows,
                                                                                   int_columns=("step",)))
    return RunFolder(
        folder, who="fake_fit", score="val", finite=("loss",),
        save_last=hook("last", lambda step: dio.atomic_write_json(folder / "last.json", {"step": step, **model})),
        save_best=hook("best", lambda step: dio.atomic_write_json(folder / "best.json", {"step": step, **model})),
        write_history=lambda path, rows: write_history(history_step(rows), path, rows),
        read_history=lambda path: dio.read_rows_csv(path, COLUMNS, int_columns=("step",)),
        best_saved_at=lambda: dio.read_json(folder / "best.json")["step"] if (folder / "best.json").is_file()
        else None,
        last_name=lambda: folder / "last.json", reset=reset)


def fake_fit(folder, steps: int, kill=None, nan_at: int | None = None, log: list | None = None) -> RunFolder:
    """The fake training loop: resume from last.json, repair, train to ``steps``, commit every EVAL_EVERY."""
    log = [] if log is None else log
    model = {"w": 0.0}
    run = _run(folder, model, log, kill)
    folder.mkdir(exist_ok=True)
    if (folder / "last.json").is_file():
        last = dio.read_json(folder / "last.json")
        model["w"] = last["w"]
        run.resume(last["step"])
        run.repair(reevaluate=lambda step: {"step": step, "loss": math.nan, "val": _val(model["w"])})
    acc, n = 0.0, 0
    for step in range(run.step + 1, steps + 1):
        model["w"] += 0.5
        acc, n = acc + (math.nan if step == nan_at else _val(model["w"]) + 1.0), n + 1
        if step % EVAL_EVERY == 0:
            run.commit(step, {"step": step, "loss": acc / n, "val": _val(model["w"])})
            acc, n = 0.0, 0
    return run


def _history(folder) -> list[dict]:
    return dio.read_rows_csv(folder / "history.csv", COLUMNS, int_columns=("step",))


def _step(folder, name: str) -> int:
    return json.loads((folder / f"{name}.json").read_text())["step"]


def test_commit_writes_last_then_history_then_best(tmp_path):
    log = []
    full = fake_fit(tmp_path / "run", 10, log=log)
    assert COMMIT_ORDER == ("last", "history", "best")
    # steps 2, 4, 6 improve (best written after history), 8 and 10 do not (no best)
    assert log == [(name, s) for s in (2, 4, 6) for name in COMMIT_ORDER] + \
                  [(name, s) for s in (8, 10) for name in COMMIT_ORDER[:2]]
    assert [r["step"] for r in full.rows] == [2, 4, 6, 8, 10] and full.best["step"] == 6
    assert _step(tmp_path / "run", "best") == 6 and _step(tmp_path / "run", "last") == 10
    assert [r["step"] for r in _history(tmp_path / "run")] == [2, 4, 6, 8, 10]


# what the folder holds after a kill instead of writing <file> at step 6: (last, history steps, best)
_AFTER_KILL = {
    "last": (4, [2, 4], 4),  # the commit of step 6 never happened
    "history": (6, [2, 4], 4),  # committed; its row and best missing
    "best": (6, [2, 4, 6], 4),  # committed with its row; best still holds step 4
}


@pytest.mark.parametrize("point", sorted(_AFTER_KILL))
def test_kill_between_files_is_repaired_on_resume(tmp_path, point):
    """Killed instead of writing each file of the commit of step 6 (the best step): the folder holds exactly the
    files written before it, in COMMIT_ORDER; a resume repairs it and ends like an uninterrupted run."""
    full = fake_fit(tmp_path / "full", 10)
    ck = tmp_path / "ck"
    with pytest.raises(Killed):
        fake_fit(ck, 10, kill=(point, 6))
    last, steps, best = _AFTER_KILL[point]
    assert (_step(ck, "last"), [r["step"] for r in _history(ck)], _step(ck, "best")) == (last, steps, best)

    log = []
    resumed = fake_fit(ck, 10, log=log)
    if point == "history":  # the missing row is re-evaluated and written, then best saved from the restored state
        assert log[:2] == [("history", 6), ("best", 6)]
    elif point == "best":
        assert log[:1] == [("best", 6)]
    assert [r["step"] for r in _history(ck)] == [r["step"] for r in full.rows] == [2, 4, 6, 8, 10]
    assert resumed.best["step"] == 6 and _step(ck, "best") == 6
    assert json.loads((ck / "best.json").read_text()) == json.loads((tmp_path / "full" / "best.json").read_text())
    assert json.loads((ck / "last.json").read_text()) == json.loads((tmp_path / "full" / "last.json").read_text())
    for got, want in zip(_history(ck), full.rows):
        assert got["val"] == want["val"]
        # a re-evaluated row has lost its training means; every other row is the uninterrupted run's
        assert got["loss"] == want["loss"] or (point == "history" and got["step"] == 6 and math.isnan(got["loss"]))


def test_history_truncated_to_the_restored_step(tmp_path):
    """History rows after 'last' (left by a writer that put history first, as the prior once did) are dropped on
    resume and the file is rewritten; a consistent history is read, not rewritten."""
    ck = tmp_path / "ck"
    fake_fit(ck, 8)
    dio.atomic_write_json(ck / "last.json", {"step": 4, "w": 2.0})  # 'last' of step 4, history up to 8
    log = []
    run = _run(ck, {"w": 2.0}, log)
    rows = run.resume(4)
    assert [r["step"] for r in rows] == [2, 4] and run.rows is rows
    assert [r["step"] for r in _history(ck)] == [2, 4] and log == [("history", 4)]
    assert run.best["step"] == 4  # the best of the rows kept, not step 6 of the dropped ones
    log.clear()
    _run(ck, {"w": 2.0}, log).resume(4)
    assert log == []  # nothing to repair: untouched
    resumed = fake_fit(ck, 10)
    assert [r["step"] for r in resumed.rows] == [r["step"] for r in _history(ck)] == [2, 4, 6, 8, 10]


def test_missing_history_row_needs_a_reevaluation(tmp_path):
    ck = tmp_path / "ck"
    fake_fit(ck, 4)
    dio.atomic_write_json(ck / "last.json", {"step": 6, "w": 3.0})
    run = _run(ck, {"w": 3.0}, [])
    run.resume(6)
    with pytest.raises(ValueError, match=r"history\.csv has no row for the restored step 6"):
        run.repair()


def test_corrupt_history_names_the_file(tmp_path):
    ck = tmp_path / "ck"
    fake_fit(ck, 4)
    (ck / "history.csv").write_text("step,loss,val\n2,abc,1.0\n")
    with pytest.raises(dio.DataError, match=r"history\.csv: line 2: column 'loss': 'abc' is not a number"):
        _run(ck, {"w": 1.0}, []).resume(4)
    # rows handed over from a committed state (the U-Net's state.json): the broken file is simply rewritten
    run = _run(ck, {"w": 1.0}, [])
    run.resume(4, rows=[{"step": 2, "loss": 1.0, "val": 4.0}, {"step": 4, "loss": 1.0, "val": 1.0}])
    assert [r["step"] for r in _history(ck)] == [2, 4]


def test_config_mismatch_refused_naming_file_and_key(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    run = _run(ck, {"w": 0.0}, [])
    run.open("digest-a", "fake checkpoint", resuming=False)  # a fresh run records its inputs
    assert json.loads((ck / "inputs.json").read_text()) == {"fingerprint": "digest-a"}
    cfg_file = ck / "config.json"
    saved = {"num_embeddings": 10, "embedding_dim": 64, "seed": 1}
    kw = dict(head=f"{ck} holds a fake model of another config", advice="use another folder",
              may_differ=("seed",), defaults={"relu": False})
    # the same config (another seed, a key written before it existed at its default): resumes
    run.open("digest-a", "fake checkpoint", resuming=True,
             config=[(cfg_file, saved, {"num_embeddings": 10, "embedding_dim": 64, "seed": 2, "relu": False})], **kw)
    with pytest.raises(ConfigMismatch) as err:
        run.open("digest-a", "fake checkpoint", resuming=True,
                 config=[(cfg_file, saved, {"num_embeddings": 12, "embedding_dim": 64, "seed": 2, "relu": True})],
                 **kw)
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert f"num_embeddings: {cfg_file} has 10, this run 12" in msg and f"relu: {cfg_file} has False" in msg
    assert "embedding_dim" not in msg and "seed" not in msg
    assert msg.startswith(f"{ck} holds a fake model of another config: ") and msg.endswith("; use another folder")
    # other inputs are refused before the config is compared
    with pytest.raises(dio.DataError, match=r"ck holds a fake checkpoint made from other data"):
        run.open("digest-b", "fake checkpoint", resuming=True, config=[(cfg_file, saved, {"num_embeddings": 12})],
                 **kw)


def test_check_config_compares_as_json_reads_back(tmp_path):
    """Tuples and lists are the same once saved; several files are reported together."""
    check_config("h", "a", [(tmp_path / "c.json", {"shape": [2, 3]}, {"shape": (2, 3)})])
    with pytest.raises(ConfigMismatch, match=r"a: .*c\.json has 1, this run 2; b: .*t\.json has 'x', this run 'y'"):
        check_config("h", "a", [(tmp_path / "c.json", {"a": 1}, {"a": 2}), (tmp_path / "t.json", {"b": "x"},
                                                                               {"b": "y"})])


def test_nan_stops_without_committing(tmp_path):
    """A non-finite loss at step 7: training stops at the commit of step 8 before any file is written, the
    in-memory state is reset, and the message names the step and the last good checkpoint."""
    ck = tmp_path / "ck"
    fake_fit(ck, 6)
    before = {p.name: p.read_bytes() for p in ck.iterdir()}
    log = []
    with pytest.raises(TrainingDiverged) as err:
        fake_fit(ck, 10, nan_at=7, log=log)
    assert isinstance(err.value, FloatingPointError)
    assert log == []  # nothing written
    assert {p.name: p.read_bytes() for p in ck.iterdir()} == before
    msg = str(err.value)
    assert msg.startswith("fake_fit: non-finite loss (nan) at step 8; training stopped")
    assert f"The last good checkpoint {ck / 'last.json'} (step 6) is kept" in msg and "lower learning_rate" in msg
    # the reset hook puts the good state back and says so
    model = {"w": float("nan")}
    run = _run(ck, model, [], reset=lambda: model.update(w=3.0) or "the model was reset to it")
    run.resume(6)
    with pytest.raises(TrainingDiverged, match=r"\(step 6\) is kept; the model was reset to it; lower"):
        run.commit(8, {"step": 8, "loss": math.inf, "val": 1.0})
    assert model["w"] == 3.0 and [r["step"] for r in run.rows] == [2, 4, 6]
    # the run goes on from the good checkpoint
    assert [r["step"] for r in fake_fit(ck, 10).rows] == [2, 4, 6, 8, 10]


def test_without_a_folder_rows_are_kept_in_memory(tmp_path):
    run = RunFolder(None, who="fake_fit", score="val", mode="max", finite=("loss",))
    assert run.commit(1, {"loss": 1.0, "val": 0.5}) and not run.commit(2, {"loss": 1.0, "val": 0.4})
    assert run.commit(3, {"loss": 1.0, "val": 0.9}) and run.best["step"] == 3
    assert run.commit(2, {"loss": 1.0, "val": 0.1}) is False  # a step committed again replaces its row
    assert [r["step"] for r in run.rows] == [1, 3, 2]
    with pytest.raises(TrainingDiverged, match="There is no checkpoint folder"):
        run.commit(4, {"loss": float("nan"), "val": 1.0})
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="needs save_last"):
        RunFolder(tmp_path, who="x")
