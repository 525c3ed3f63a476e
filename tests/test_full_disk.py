"""Issue 24: a full disk is one paragraph (exit status 2) naming the file, the bytes it needed and the bytes free, with
no temporary file left and the previous checkpoint intact; ``train`` checks the free space before it starts.

The disk fills in two ways, simulated in the write itself: torch's serializer coming up short (what ``torch.save``
raises on a full file system: ``unexpected pos ...``, no errno), with the file system's free space then nearly
nothing, and ``OSError`` ENOSPC from a plain write (a results file of ``main.py test``).
"""
from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

import diskspace
import runs
import storage
from checkpoint import read_checkpoint
from helpers import run_main
from recipe import TrainConfig
from synth import generate

SHORT_WRITE = "[enforce fail at inline_container.cc:672] . unexpected pos 23661312 vs 23661208"
TINY = ["--backbones", "resnet50", "--categories", "synth_object", "--image-size", "32", "--batch-size", "4",
        "--no-pretrained", "--no-eta", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """8 normal training images at 32 px (7 after the validation hold-out: 2 steps per epoch, the last partial)."""
    root = tmp_path_factory.mktemp("tiny")
    generate(root, categories=2, image_size=32, n_train=8, n_test=6, seed=0)
    return root


def one_paragraph(err: str) -> str:
    """The error message main.py printed (after whatever tqdm left on the line): one line, no traceback."""
    assert "Traceback" not in err and err.count("error: ") == 1, err
    return err[err.index("error: "):].splitlines()[0]


def temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(f"*{runs.TEMPORARY_SUFFIX}")]


def test_a_full_disk_during_a_checkpoint_save_and_the_results_writes_is_one_paragraph(
        tiny_root, tmp_path, monkeypatch, capsys):
    """Epoch 1's checkpoint is written; at epoch 2 the disk is full: torch's serializer comes up short. The run then
    resumes from epoch 1, and ``test`` of it meets a full disk at scores.csv (ENOSPC)."""
    real_save, real_free, real_write = torch.save, diskspace.free_bytes, Path.write_bytes
    full = []

    def save(obj, f, *args, **kwargs):
        if str(f).endswith(runs.TEMPORARY_SUFFIX) and f".{runs.CHECKPOINT_FILE}." in str(f) and obj[
                "training_state"]["epoch"] == 2:
            Path(f).write_bytes(os.urandom(4096))  # what fitted
            full.append(f)
            raise RuntimeError(SHORT_WRITE)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(diskspace, "free_bytes", lambda path: 10**6 if full else real_free(path))
    monkeypatch.chdir(tmp_path)
    code = run_main("train", "--data-root", str(tiny_root), *TINY, "--epochs", "2", "--checkpoint-every", "1")
    message = one_paragraph(capsys.readouterr().err)
    assert code == 2 and full
    checkpoint = Path("checkpoints") / "resnet50" / "synth_object" / "seed0" / runs.CHECKPOINT_FILE
    assert message.startswith(f"error: {checkpoint}: the disk is full: writing it needs ")
    config = TrainConfig(data_root=str(tiny_root), category="synth_object", backbone="resnet50", image_size=32,
                         batch_size=4)
    sizes = storage.checkpoint_sizes(config)  # known before anything is written
    assert f"needs {diskspace.format_bytes(sizes.finished)} and " in message  # epoch 2 of 2: the weights alone
    free = int(re.search(r"\(([\d,]+) bytes\) are free", message).group(1).replace(",", ""))
    assert 10**6 + 4096 <= free <= 10**6 + 16384  # the free space, with what the partial file held given back
    assert "the previous last.pth is unchanged" in message and "--checkpoints" in message
    assert temporaries(tmp_path) == []
    assert read_checkpoint(checkpoint)["training_state"]["epoch"] == 1  # still loads: the last good epoch
    assert 0 <= sizes.unfinished - checkpoint.stat().st_size < 2 * 2**20  # the size estimate: an upper bound

    def write_bytes(self, data):
        if self.name.startswith(f".{runs.SCORES_FILE}."):
            real_write(self, data[:100])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    code = run_main("test", "--device", "cpu", "--no-scale-ablation", "--no-save-maps")
    message = one_paragraph(capsys.readouterr().err)
    run_dir = Path("results") / "resnet50" / "synth_object" / "seed0"
    assert code == 2 and message.startswith(f"error: {run_dir / runs.SCORES_FILE}: the disk is full: writing it needs ")
    assert "are free on" in message and "no scores.csv was left behind" in message
    assert temporaries(tmp_path) == [] and not (run_dir / runs.METRICS_FILE).exists()


def test_train_refuses_to_start_without_space_for_its_largest_checkpoint(tiny_root, tmp_path, monkeypatch, capsys):
    """Free space below the largest checkpoint (with Adam's moments, written at epoch 1 of 2): refused before any
    folder exists; --skip-space-check starts anyway with the warning."""
    config = TrainConfig(data_root=str(tiny_root), category="synth_object", backbone="resnet50", image_size=32,
                         batch_size=4)
    largest = storage.checkpoint_sizes(config).unfinished
    monkeypatch.setattr(diskspace, "free_bytes", lambda path: largest // 2)
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--data-root", str(tiny_root), *TINY, "--epochs", "2", "--checkpoint-every", "1"]
    assert run_main(*argv) == 2
    message = one_paragraph(capsys.readouterr().err)
    assert "not enough free space" in message and diskspace.format_bytes(largest) in message
    assert "--skip-space-check" in message and list(tmp_path.iterdir()) == []
    # a 1-epoch run writes only the finished checkpoint (a third of the size): it fits
    with pytest.raises(diskspace.DiskFull):
        storage.check_free_space([TrainConfig(**{**vars(config), "epochs": 2, "checkpoint_every": 1})])
    assert storage.check_free_space([TrainConfig(**{**vars(config), "epochs": 1})]) == []
    assert storage.check_free_space([TrainConfig(**{**vars(config), "epochs": 2, "checkpoint_every": 1})],
                                    skip=True)[0].startswith("warning: not enough free space")


def test_free_space_is_read_where_the_folder_will_be(tmp_path):
    assert diskspace.existing_folder(tmp_path / "not" / "yet") == tmp_path
    assert diskspace.free_bytes(tmp_path / "not" / "yet") == shutil.disk_usage(tmp_path).free
    assert diskspace.same_file_system(tmp_path / "a", tmp_path / "b")
    assert diskspace.is_write_failure(OSError(errno.ENOSPC, "full")) and diskspace.is_write_failure(
        RuntimeError(SHORT_WRITE))
    assert not diskspace.is_write_failure(OSError(errno.EACCES, "denied"))
    assert not diskspace.is_write_failure(RuntimeError("something else"))
