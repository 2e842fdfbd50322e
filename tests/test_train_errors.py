"""Hostile input to a training run: an earlier run's folder, impossible settings, a swapped or
damaged checkpoint, a full disk at a save. Each ends in one line that names the file or key and
the fix, and loses nothing (the runs are tests/test_train.py's tiny ones, a few steps each)."""

from __future__ import annotations

import errno
import json
import shlex
import shutil
from pathlib import Path

import pytest
import test_train
from test_train import ROOT, cli_args, losses, tiny_config

data_root = test_train.data_root  # the module's tiny synthetic dataset (a fixture)

# Every run here is tiny_config's 6-step schedule (the schedule is compiled into the step: one
# program for all of them and for tests/test_train.py's runs, through the session's compilation
# cache), stopped early with stop_after. A run stopped after step 4 with checkpoints at steps 2
# and 4, both kept, is copied by the tests that damage it, which resume it for a step.
SAVED = {"checkpoint.every": 2, "checkpoint.keep": 10}


@pytest.fixture(scope="module")
def saved_run(data_root, tmp_path_factory):
    from tools.train import train

    wd = tmp_path_factory.mktemp("saved") / "run"
    train(tiny_config(data_root, wd, **SAVED), stop_after=4, progress=False)
    assert sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]
    return wd


def copy_of(run: Path, tmp_path: Path) -> Path:
    wd = tmp_path / "run"
    shutil.copytree(run, wd)
    return wd


def snapshot(wd: Path) -> dict[str, bytes]:
    return {str(p.relative_to(wd)): p.read_bytes() for p in sorted(wd.rglob("*")) if p.is_file() and p.name != ".lock"}


def main_error(capsys, cfg, *extra) -> str:
    """``python -m jax_csfcn.train`` (in this process) on ``cfg``: it must exit 1 with one line."""
    from tools.train import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["--config", str(ROOT / "jax_csfcn/config.py"), "--no-progress", *cli_args(cfg), *extra])
    err = capsys.readouterr().err
    assert e.value.code == 1, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    return lines[0]


# --------------------------------------------------------------------------- 1. an earlier run's folder
def test_a_new_run_refuses_a_folder_with_an_earlier_runs_files_and_resume_takes_it(data_root, tmp_path):
    """A run killed before its first checkpoint left config.json, metrics.jsonl and a partial save:
    a new run there stops before any work, naming the files; --resume starts it again from step 0
    without a repeated metrics line, and sweeps the partial save."""
    from jax_csfcn.step import TrainError
    from tools.train import train

    wd = tmp_path / "run"
    wd.mkdir()
    (wd / "config.json").write_text('{"mine": true}\n')
    (wd / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 9.0}) + "\n" for s in (1, 2)))
    partial = wd / "checkpoints" / "3.orbax-checkpoint-tmp-1700000000"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "half_written").write_bytes(b"\0" * 100)
    before = snapshot(wd)
    cfg = tiny_config(data_root, wd)
    with pytest.raises(TrainError, match=r"already holds config\.json, metrics\.jsonl .*--config\.workdir.*--resume"):
        train(cfg, stop_after=3, progress=False)
    assert snapshot(wd) == before, "the refused run changed the folder"

    train(cfg, resume=True, stop_after=3, progress=False)
    rows = [json.loads(ln) for ln in (wd / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3] and 9.0 not in losses(wd).values()
    assert not partial.exists(), "the partial save of the killed run was not swept"


# --------------------------------------------------------------------------- 2. impossible settings
@pytest.mark.parametrize(
    "key,value,message",
    [
        ("model.name", "unknown", r"model\.name='unknown': choose one of \(.*'csfcn_tiny'"),
        (
            "data.scale_range",
            (2.0, 0.5),
            r"data\.scale_range=\(2\.0, 0\.5\) .*--config\.data\.scale_range='\(0\.5, 2\.0\)'",
        ),
        ("data.geometry", "gpu", r"data\.geometry must be one of \('host', 'device'\), got 'gpu'"),
    ],
)
def test_an_impossible_model_or_scale_range_stops_before_any_work(data_root, tmp_path, key, value, message):
    from jax_csfcn.step import TrainError
    from tools.train import train

    cfg = tiny_config(data_root, tmp_path / "run", **{key: value})
    with pytest.raises(TrainError, match=message):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()


def test_resume_with_another_batch_size_names_the_checkpoints(saved_run, data_root, tmp_path):
    from jax_csfcn.step import TrainError
    from tools.train import train

    wd = copy_of(saved_run, tmp_path)
    before = snapshot(wd)
    cfg = tiny_config(data_root, wd, **SAVED, **{"train.batch_size": 4})
    with pytest.raises(
        TrainError, match=r"train\.batch_size=4, .*step 4 .*train\.batch_size=2 .*--config\.train\.batch_size=2"
    ):
        train(cfg, resume=True, progress=False)
    assert snapshot(wd) == before


# --------------------------------------------------------------------------- 3. a swapped state/
def test_a_state_swapped_for_another_steps_is_refused_naming_both(saved_run, data_root, tmp_path):
    from jax_csfcn.checkpointing import CheckpointError
    from tools.train import train

    wd = copy_of(saved_run, tmp_path)
    ck = wd / "checkpoints"
    shutil.rmtree(ck / "4" / "state")
    shutil.copytree(ck / "2" / "state", ck / "4" / "state")
    before = snapshot(wd)
    with pytest.raises(CheckpointError, match=r"step 4 .*state/ holds a state after 2 optimizer steps.*step 4") as e:
        train(tiny_config(data_root, wd, **SAVED), resume=True, progress=False)
    assert "resume from step 2, the last intact checkpoint" in str(e.value)
    assert snapshot(wd) == before, "the refused resume changed the run"


# --------------------------------------------------------------------------- 4. a damaged file
def test_a_truncated_checkpoint_file_names_it_and_the_way_back_to_the_last_intact_step(
    saved_run, data_root, tmp_path, capsys
):
    from tools.train import train

    wd = copy_of(saved_run, tmp_path)
    step4 = wd / "checkpoints" / "4"
    big = max((p for p in (step4 / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(big, "r+b") as f:
        f.truncate(big.stat().st_size // 2)
    before = snapshot(wd)
    cfg = tiny_config(data_root, wd, **SAVED)
    line = main_error(capsys, cfg, "--resume", "--stop-after=1")
    assert f"checkpoint step 4 ({step4}) is damaged: {big.relative_to(step4)} cannot be read" in line, line
    assert "resume from step 2, the last intact checkpoint, with: " in line, line
    assert snapshot(wd) == before, "the failed resume changed the run"
    # The command it gives, as given: the damaged step is kept aside and the run goes on from step 2.
    command = line.split("with: ", 1)[1].split(" (the damaged")[0]
    mkdir, mv, cli = (shlex.split(c) for c in command.split(" && "))
    assert mkdir[:2] == ["mkdir", "-p"] and mv[0] == "mv" and mv[1:-1] == [str(step4)], command
    assert cli[:3] == ["python", "-m", "jax_csfcn.train"] and "--resume" in cli, command
    Path(mkdir[2]).mkdir(parents=True)
    shutil.move(mv[1], mv[-1])
    assert (Path(mv[-1]) / "4" / big.relative_to(step4)).exists(), "the damaged step was not kept"
    train(cfg, resume=True, stop_after=1, progress=False)
    assert sorted(losses(wd)) == [1, 2, 3]  # the lines logged after step 2 were dropped


# --------------------------------------------------------------------------- 5. a full disk
def test_a_full_disk_at_a_checkpoint_is_one_line_and_leaves_no_partial_step(data_root, tmp_path, capsys, monkeypatch):
    """The checkpoint writer fails with ENOSPC half-way through a save (as on a full disk): one
    line, exit 1, and no step folder nor temporary save left behind."""
    from orbax.checkpoint._src.handlers import json_checkpoint_handler

    async def full_disk(self, x, directory):
        (directory / "metadata").write_text('{"half": ')  # what had fit
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "metadata"))

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", full_disk)
    wd = tmp_path / "run"
    cfg = tiny_config(data_root, wd, **{"checkpoint.every": 2})
    line = main_error(capsys, cfg, "--stop-after=2")
    assert line.startswith(f"error: No space left on device writing {wd / 'checkpoints' / '2'}: "), line
    assert "nothing partial was kept" in line and "--resume" in line, line
    left = sorted(p.name for p in (wd / "checkpoints").iterdir()) if (wd / "checkpoints").exists() else []
    assert left == [], f"partial checkpoints left: {left}"
    assert sorted(losses(wd)) == [1, 2]  # what was logged up to the failed save is kept
