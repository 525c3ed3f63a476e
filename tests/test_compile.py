"""Issue 15: ``--compile`` compiles once per run, the smaller last batch of an epoch included.

train.py's compile path (``recipe.compiled_train_step``) runs for two epochs whose last batch is partial.
Dynamo's "eager" backend is selected through the documented ``RD_COMPILE_BACKEND`` hook: the same
tracing, guards and recompilation rules as inductor, without a minute of code generation on a CPU.
The number of compiled graphs (torch._dynamo's counters) is read after every step.
"""
from __future__ import annotations

import torch
from torch._dynamo.utils import counters

import recipe
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

    def counting_step():
        step = compiled_train_step()

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
