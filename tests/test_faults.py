"""Fault injection: bad flags, config files, data, weights, checkpoints and results files, concurrent runs
and killed saves. Every case must end in exit status 2 with a message naming the culprit, no Python
traceback, and no file left behind (issue 12's list, one case each)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import runs
from helpers import run_main
from recipe import TrainConfig
from train import train_run

MAIN = Path(__file__).resolve().parents[1] / "RD4AD-main" / "main.py"
TINY = ["--backbones", "resnet50", "--categories", "synth_texture", "--epochs", "1", "--image-size", "64",
        "--batch-size", "8", "--no-pretrained", "--no-eta", "--device", "cpu"]
PRETRAINED_TINY = ["--categories", "synth_texture", "--epochs", "1", "--image-size", "64", "--batch-size", "8",
                   "--no-eta", "--device", "cpu"]


def run_main_err(capsys, *argv: str) -> tuple[int, str]:
    """main.py in this process; (exit status, stderr)."""
    code = run_main(*argv)
    return code, capsys.readouterr().err


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def expect_refusal(capsys, culprit: str, *argv: str, untouched: Path | None = None) -> str:
    before = files_under(untouched) if untouched else None
    code, err = run_main_err(capsys, *argv)
    assert code == 2, (argv, err)
    assert "Traceback" not in err and culprit in err, (culprit, err)
    if untouched is not None:
        assert files_under(untouched) == before, "files were written"
    return err


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ------------------------------------------------------------------------------------------ flags

@pytest.mark.parametrize("flags, culprit", [
    (["--epochs", "0"], "--epochs 0: expected at least 1"),
    (["--epochs", "-3"], "--epochs -3: expected at least 1"),
    (["--batch-size", "0"], "--batch-size 0: expected at least 2"),
    (["--batch-size", "1"], "--batch-size 1: expected at least 2"),
    (["--checkpoint-every", "0"], "--checkpoint-every 0: expected at least 1"),
    (["--lr", "-1"], "--lr -1.0: expected more than 0"),
    (["--val-fraction", "1.5"], "--val-fraction 1.5"),
    (["--image-size", "100"], "--image-size 100 is not divisible by 32"),
    (["--model-knobs", '{"embed": 1}'], "embed: not a knob of resnet50"),
    (["--model-knobs", "[1]"], "expected a JSON object"),
    (["--device", "tpu"], "--device 'tpu'"),
    (["--categories", "../other/cat"], "not a plain folder name"),
    (["--teacher-weights", "a.pth,b.pth", "--backbones", "resnet50,convnext_tiny"], "NAME=PATH"),
])
def test_bad_train_flags(capsys, workdir, synthetic_root, flags, culprit):
    expect_refusal(capsys, culprit, "train", "--data-root", str(synthetic_root), *TINY, *flags, untouched=workdir)


def test_bad_test_flags(capsys, workdir):
    expect_refusal(capsys, "--threshold-rule", "test", "--threshold-rule", "bogus", untouched=workdir)


# ------------------------------------------------------------------------------------------ config files

@pytest.mark.parametrize("text, culprit", [
    ("[1, 2]", "expected a JSON object of settings"),
    ('{"lr": "3"}', "field 'lr'"),
    ('{"val_fraction": 1.5}', "field 'val_fraction'"),
    ('{"split_seed": true}', "field 'split_seed'"),
    ("{broken", "not valid JSON"),
])
def test_bad_config_files(capsys, workdir, synthetic_root, text, culprit):
    (workdir / "bad.json").write_text(text)
    expect_refusal(capsys, culprit, "train", "--data-root", str(synthetic_root), "--config", "bad.json", *TINY)


def test_missing_config_file(capsys, workdir, synthetic_root):
    expect_refusal(capsys, "--config nope.json: no such file", "train", "--data-root", str(synthetic_root),
                   "--config", "nope.json", *TINY, untouched=workdir)


# ------------------------------------------------------------------------------------------ data

def test_category_without_train_good_under_all(capsys, workdir, synthetic_root):
    data = workdir / "data"
    shutil.copytree(synthetic_root, data)
    (data / "stray_category" / "test").mkdir(parents=True)
    expect_refusal(capsys, "stray_category", "train", "--data-root", str(data), *TINY[:2], "--categories", "all",
                   *TINY[4:])
    assert not (workdir / "results").exists()


def test_unreadable_data_root_is_named(capsys, workdir):
    (workdir / "a_file").write_text("not a folder")
    expect_refusal(capsys, "a_file", "check-data", "--data-root", "a_file")


def test_damaged_image_is_named(capsys, workdir, synthetic_root):
    data = workdir / "data"
    shutil.copytree(synthetic_root, data)
    victim = sorted((data / "synth_texture" / "train" / "good").iterdir())[3]
    victim.write_bytes(b"\x89PNG broken")
    expect_refusal(capsys, victim.name, "train", "--data-root", str(data), *TINY)


def test_download_dest_pointing_at_a_file(capsys, workdir):
    import hashlib

    (workdir / "taken").write_text("x")
    (workdir / "archive.tar").write_bytes(b"not an archive")
    digest = hashlib.sha256(b"not an archive").hexdigest()
    expect_refusal(capsys, "taken", "download", "--data-root", "taken", "--archive", "archive.tar",
                   "--sha256", digest)


# ------------------------------------------------------------------------------------------ weights

def test_missing_weights_of_the_second_backbone_fail_in_seconds(capsys, workdir, synthetic_root, monkeypatch):
    """The first backbone's weights are in the cache, the second's cannot be downloaded: both are named,
    nothing trains, within seconds."""
    from torchvision.models import resnet50

    import backbones

    monkeypatch.setenv("TORCH_HOME", str(workdir / "torch"))
    cache = workdir / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(resnet50().state_dict(), cache / "resnet50-0676ba61.pth")
    enum = backbones.BACKBONES["convnext_tiny"].default_weights
    monkeypatch.setattr(type(enum), "url", property(lambda self: "http://127.0.0.1:9/convnext_tiny-983f1562.pth"))
    started = time.monotonic()
    err = expect_refusal(capsys, "convnext_tiny: MISSING", "train", "--data-root", str(synthetic_root),
                         "--backbones", "resnet50,convnext_tiny", "--categories", "synth_texture", "--epochs", "1",
                         "--image-size", "64", "--batch-size", "8", "--device", "cpu")
    assert time.monotonic() - started < 10
    assert "resnet50: ok" in err and "convnext_tiny-983f1562.pth" in err
    assert not (workdir / "results").exists() and not (workdir / "checkpoints").exists()


def test_weights_of_the_wrong_architecture_name_their_owner(capsys, workdir, synthetic_root):
    from torchvision.models import resnet50

    torch.save(resnet50().state_dict(), workdir / "r50.pth")
    err = expect_refusal(capsys, "does not fit convnext_tiny", "train", "--data-root", str(synthetic_root),
                         *PRETRAINED_TINY, "--backbones", "convnext_tiny", "--teacher-weights", "r50.pth")
    assert "they fit resnet50, resnet50_v2" in err and len(err) < 1500


def test_weights_file_that_is_not_a_state_dict(capsys, workdir, synthetic_root):
    (workdir / "junk.pth").write_bytes(b"junk")
    expect_refusal(capsys, "junk.pth", "train", "--data-root", str(synthetic_root), *PRETRAINED_TINY,
                   "--backbones", "resnet50", "--teacher-weights", "junk.pth")


# ------------------------------------------------------------------------------------------ checkpoints and runs

@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory):
    """One finished 1-epoch run, copied by the tests that break it."""
    root = tmp_path_factory.mktemp("trained")
    config = TrainConfig(data_root=str(synthetic_root), category="synth_texture", backbone="resnet50", epochs=1,
                         image_size=64, batch_size=8, pretrained=False, device="cpu")  # relative folders
    here = os.getcwd()
    os.chdir(root)
    try:
        train_run(config, quiet=True)
    finally:
        os.chdir(here)
    return root


def test_checkpoint_with_the_tag_but_missing_keys(capsys, workdir, trained):
    shutil.copytree(trained, workdir, dirs_exist_ok=True)
    path = workdir / "checkpoints" / "resnet50" / "synth_texture" / "seed0" / runs.CHECKPOINT_FILE
    payload = torch.load(path, weights_only=True)
    torch.save({k: v for k, v in payload.items() if k != "bottleneck"}, path)
    expect_refusal(capsys, "lacks bottleneck", "test", "--device", "cpu")


def test_truncated_checkpoint(capsys, workdir, trained):
    shutil.copytree(trained, workdir, dirs_exist_ok=True)
    path = workdir / "checkpoints" / "resnet50" / "synth_texture" / "seed0" / runs.CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[:1000])
    err = expect_refusal(capsys, "checkpoints/resnet50/synth_texture/seed0/last.pth", "test", "--device", "cpu")
    assert len(err.strip().splitlines()[-1]) < 600  # one paragraph, not torch's page of advice


def test_corrupt_run_config(capsys, workdir, trained):
    shutil.copytree(trained, workdir, dirs_exist_ok=True)
    (workdir / "results" / "resnet50" / "synth_texture" / "seed0" / runs.CONFIG_FILE).write_text("{oops")
    expect_refusal(capsys, "config.json", "test", "--device", "cpu")


def test_unwritable_results_folder(capsys, workdir, synthetic_root):
    (workdir / "results").write_text("a file where the results folder should be")
    expect_refusal(capsys, "results", "train", "--data-root", str(synthetic_root), *TINY)


def test_second_process_on_a_locked_run_stops_at_once(capsys, workdir, synthetic_root):
    config = TrainConfig(data_root=str(synthetic_root), category="synth_texture", backbone="resnet50")
    with runs.RunLock(config.run_dir):
        started = time.monotonic()
        err = expect_refusal(capsys, f"PID {os.getpid()}", "train", "--data-root", str(synthetic_root), *TINY)
        assert "in use" in err and time.monotonic() - started < 30
    assert not (config.checkpoint_path.parent / runs.CHECKPOINT_FILE).exists()


# ------------------------------------------------------------------------------------------ processes

# main.py with a torch.save that, for the checkpoint, writes a few bytes, says so and hangs: a save to kill
SLOW_CHECKPOINT_SAVE = (
    "import sys, time, torch; sys.argv = sys.argv[1:]; real = torch.save\n"
    "def save(obj, f, *a, **k):\n"
    "    if 'last.pth' not in str(f):\n        return real(obj, f, *a, **k)\n"
    "    open(f, 'wb').write(b'partial'); print('SAVING', flush=True); time.sleep(600)\n"
    "torch.save = save\nsys.path.insert(0, sys.argv[0].rsplit('/', 1)[0])\nimport main\n"
    "sys.exit(main.main(sys.argv[1:]))\n")


def _train_command(synthetic_root: Path, *extra: str) -> list[str]:
    return [sys.executable, str(MAIN), "train", "--data-root", str(synthetic_root), *TINY, *extra]


def test_two_concurrent_trainings_of_one_run_cannot_both_write(workdir, synthetic_root):
    """Two train commands with different settings on one run folder: one trains, the other stops with the
    holder named; config.json, history.csv and the checkpoint then describe the same run."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen(_train_command(synthetic_root, "--lr", "0.001"), cwd=workdir, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = workdir / "results" / "resnet50" / "synth_texture" / "seed0" / runs.LOCK_FILE
    deadline = time.time() + 120
    while not (lock.is_file() and lock.read_text().strip()):
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.1)
    second = subprocess.run(_train_command(synthetic_root, "--lr", "0.002"), cwd=workdir, env=env,
                            capture_output=True, text=True, timeout=120)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 2 and f"PID {first.pid}" in second.stderr and "Traceback" not in second.stderr
    record = runs.read_json(lock.parent / runs.CONFIG_FILE)
    assert record["lr"] == 0.001


def test_a_save_killed_midway_leaves_no_orphan_after_the_next_start(workdir, synthetic_root):
    """SIGKILL while the checkpoint is written leaves a temporary file; the next start of the run removes it."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    slow_save = SLOW_CHECKPOINT_SAVE
    process = subprocess.Popen([sys.executable, "-c", slow_save, str(MAIN), "train", "--data-root",
                                str(synthetic_root), *TINY], cwd=workdir, env=env, stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        if "SAVING" in line:
            break
    process.send_signal(signal.SIGKILL)
    process.wait()
    folder = workdir / "checkpoints" / "resnet50" / "synth_texture" / "seed0"
    assert [p.name for p in folder.glob(".last.pth.*.tmp")], "the kill should leave a temporary file"
    done = subprocess.run(_train_command(synthetic_root), cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert not list(folder.glob(".*.tmp")) and (folder / runs.CHECKPOINT_FILE).is_file()


def test_sigterm_during_a_save_removes_the_temporary_file(workdir, synthetic_root):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    slow_save = SLOW_CHECKPOINT_SAVE
    process = subprocess.Popen([sys.executable, "-c", slow_save, str(MAIN), "train", "--data-root",
                                str(synthetic_root), *TINY], cwd=workdir, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if "SAVING" in line:
            break
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    folder = workdir / "checkpoints" / "resnet50" / "synth_texture" / "seed0"
    assert not list(folder.glob(".*.tmp"))


# ------------------------------------------------------------------------------------------ what is written

def test_written_files_follow_the_umask_and_json_is_strict(workdir):
    previous = os.umask(0o022)
    try:
        runs.atomic_write_json(workdir / "a.json", {"threshold": float("-inf"), "x": [float("nan"), 1.0]})
    finally:
        os.umask(previous)
    path = workdir / "a.json"
    assert path.stat().st_mode & 0o777 == 0o644
    data = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"non-strict JSON: {name}"))
    assert data["threshold"] is None and "-inf" in data["threshold_note"] and data["x"] == [None, 1.0]


def test_mask_with_other_defect_values_is_read_and_reported(capsys, workdir, synthetic_root):
    data = workdir / "data"
    shutil.copytree(synthetic_root, data)
    mask = sorted((data / "synth_object" / "ground_truth").rglob("*.png"))[0]
    values = np.asarray(Image.open(mask))
    Image.fromarray(np.where(values > 0, 100, 0).astype(np.uint8)).save(mask)
    code, err = run_main_err(capsys, "check-data", "--data-root", str(data), "--categories", "synth_object",
                         "--image-size", "64", "--decode")
    assert code == 0 and "Traceback" not in err
    from dataset import MVTecDataset

    masks = MVTecDataset(data, "synth_object", "test", 64).uint8_masks()
    assert masks.sum() > 0 and int(masks.max()) == 1


# ------------------------------------------------------------------------------------------ checks before any folder (issue 20)

def paths_under(folder: Path) -> list[str]:
    """Every file and folder under ``folder`` (an empty folder or a lone .lock counts)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.mark.parametrize("flags, culprit", [
    (["--seeds", "99999999999999999999999"], "--seeds 99999999999999999999999: expected a whole number from 0 to "
                                             "4294967295"),
    (["--seeds", "0,4294967296"], "--seeds 4294967296: expected a whole number from 0 to 4294967295"),
    (["--data-root", "/no/such/dir"], "data root /no/such/dir does not exist"),
    pytest.param(["--device", "cuda"], "--device cuda: CUDA is not available", marks=NO_GPU),
])
def test_failing_checks_leave_no_file_or_folder(capsys, workdir, synthetic_root, flags, culprit):
    """Seeds, data root (a named category) and device are checked before any run's folder or lock exists."""
    before = paths_under(workdir)
    err = expect_refusal(capsys, culprit, "train", "--data-root", str(synthetic_root), *TINY, *flags)
    assert len(err.strip().splitlines()) == 1  # one paragraph
    assert paths_under(workdir) == before


def test_the_largest_seed_seeds_everything():
    from recipe import check_config, epoch_batches, seed_everything

    largest = 2**32 - 1
    check_config(TrainConfig(data_root="data", category="synth_texture", backbone="resnet50", seed=largest))
    seed_everything(largest)
    assert sorted(i for batch in epoch_batches(10, 4, largest, 200) for i in batch) == list(range(10))
