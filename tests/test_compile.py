"""Issue 15: ``--compile`` compiles once per run, the smaller last batch of an epoch included.

train.py's compile path (``recipe.compiled_train_step``) runs for two epochs whose last batch is partial.
Dynamo's "eager" backend is selected through the documented ``RD_COMPILE_BACKEND`` hook: the same
tracing, guards and recompilation rules as inductor, without a minute of code generation on a CPU.
The number of compiled graphs (torch._dynamo's counters) is read after every step.
"""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import recipe
from helpers import TinyStudent, TinyTeacher
from rd_model import ReverseDistillation
from recipe import TrainConfig
from train import train_run


def test_compile_once_over_two_epochs_with_a_partial_batch(synthetic_root, tmp_path, monkeypatch):
    """Under bf16 autocast (forced on, on the CPU: CUDA's default path), so that the teacher copy chosen
    under autocast is traced too."""
    monkeypatch.setenv(recipe.COMPILE_BACKEND_ENV, "eager")
    torch._dynamo.reset()
    counters.clear()
    steps: list[tuple[int, int]] = []  # (batch size, graphs compiled so far) after each step
    compiled_train_step = recipe.compiled_train_step

    def counting_step(*step_function):
        step = compiled_train_step(*step_function)

        def counted(model, optimizer, batch, *args, **kwargs):
            result = step(model, optimizer, batch, *args, **kwargs)
            steps.append((len(batch), counters["stats"]["unique_graphs"]))
            return result

        return counted

    monkeypatch.setattr(recipe, "compiled_train_step", counting_step)
    config = TrainConfig(data_root=str(synthetic_root), category="synth_object", backbone="resnet50", epochs=2,
                         image_size=32, batch_size=8, pretrained=False, compile=True, amp="bf16",
                         results=str(tmp_path / "results"), checkpoints=str(tmp_path / "checkpoints"))
    train_run(config, quiet=True)

    sizes = [size for size, _ in steps]
    assert len(sizes) == 6 and min(sizes) < 8 == sizes[0]  # 2 epochs of 3 batches, each ending with a partial one
    graphs = [count for _, count in steps]
    assert graphs[0] > 0 and graphs == [graphs[0]] * len(graphs), steps  # everything compiled at the first step


def test_a_sweep_of_ten_runs_stays_compiled(monkeypatch, caplog):
    """Issue 19: a sweep calls ``compiled_train_step`` once per run with a new model and optimiser. Every one of 10
    runs (more than dynamo's recompile limit of 8) compiles at its first step and then reuses its graphs, the
    partial batch included; a run that fell back to eager would compile nothing, and dynamo would warn."""
    monkeypatch.setenv(recipe.COMPILE_BACKEND_ENV, "eager")
    torch._dynamo.reset()
    counters.clear()
    fast = recipe.FastPath(channels_last=False, autocast_dtype=None, compile=True)
    device = torch.device("cpu")
    new_graphs: list[list[int]] = []  # per run: graphs compiled at each of its steps
    with caplog.at_level("WARNING", logger="torch._dynamo"):
        for run in range(10):
            torch.manual_seed(run)
            model = ReverseDistillation(TinyTeacher(), torch.nn.Identity(), TinyStudent())
            optimizer = torch.optim.Adam(model.trainable_modules().parameters(), lr=1e-3, fused=True)
            step = recipe.compiled_train_step()
            per_step = []
            for size in (8, 8, 5, 8, 5):
                before = counters["stats"]["unique_graphs"]
                loss, _ = step(model, optimizer, torch.randn(size, 3, 32, 32), fast, device)
                per_step.append(counters["stats"]["unique_graphs"] - before)
                assert torch.isfinite(loss)
            new_graphs.append(per_step)
    assert all(steps[0] > 0 and steps[1:] == [0] * 4 for steps in new_graphs), new_graphs
    assert len({steps[0] for steps in new_graphs}) == 1, new_graphs  # each run compiles the same graph set
    assert not [r.getMessage() for r in caplog.records if "limit" in r.getMessage()]


@pytest.mark.parametrize("command", ["train", "tune"])
def test_compile_without_a_compiler_is_one_paragraph_before_the_data_is_read(command, synthetic_root, tmp_path,
                                                                            monkeypatch, capsys):
    """Issue 24: inductor on a machine without its compiler used to end in a traceback after the data was loaded.
    Now, for train and for tune's grid: exit 2, one paragraph naming what is missing and the flag to drop, no data
    opened, nothing created."""
    import dataset
    import toolchain
    from helpers import run_main

    monkeypatch.delenv(recipe.COMPILE_BACKEND_ENV, raising=False)  # inductor, the default
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))

    def no_data(*_args, **_kwargs):
        raise AssertionError("the data was opened before the toolchain was checked")

    monkeypatch.setattr(dataset.AnomalyDataset, "__init__", no_data)
    monkeypatch.chdir(tmp_path)
    code = run_main(command, "--data-root", str(synthetic_root), "--categories", "synth_object", "--backbones",
                    "resnet50", "--epochs", "1", "--image-size", "32", "--no-pretrained", "--device", "cpu",
                    "--compile")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"C++ compiler CXX={tmp_path / 'no-such-c++'} (not found)" in err and "Drop --compile" in err
    assert list(tmp_path.iterdir()) == []
    # on CUDA: triton and a C compiler for its launcher; dynamo's eager backend needs nothing
    monkeypatch.setattr(toolchain.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    missing = toolchain.missing_for_compile("cuda")
    assert any("triton" in item for item in missing) and any("C compiler CC=" in item for item in missing)
    monkeypatch.setenv(recipe.COMPILE_BACKEND_ENV, "eager")
    assert toolchain.missing_for_compile("cuda") == toolchain.missing_for_compile("cpu") == []
