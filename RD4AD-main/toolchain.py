"""What ``--compile`` needs besides torch, checked before anything is loaded, so that a missing compiler is one
paragraph at the start instead of a traceback from inductor after the data is read and the model built.

Inductor (``torch.compile``'s default backend) generates code and compiles it on this machine: on CUDA, triton
kernels whose launcher triton builds with a C compiler (``$CC``, else gcc or clang) against ``Python.h``; on the
CPU, C++ (``$CXX``, else g++) against ``Python.h``. Dynamo's ``eager`` backend (``RD_COMPILE_BACKEND=eager``,
the tests') compiles nothing and needs none of them.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sysconfig

from errors import RDError

__all__ = ["COMPILE_BACKEND_ENV", "check_compile_toolchain", "compile_backend", "missing_for_compile"]

# The torch.compile backend of ``--compile`` (default inductor). Tests select dynamo's "eager" backend with it:
# the same tracing, guards and recompilation rules without minutes of code generation on a CPU.
COMPILE_BACKEND_ENV = "RD_COMPILE_BACKEND"


def compile_backend() -> str:
    """The torch.compile backend ``--compile`` uses: inductor unless ``RD_COMPILE_BACKEND`` names another."""
    return os.environ.get(COMPILE_BACKEND_ENV) or "inductor"


def _compiler(variable: str, names: tuple[str, ...], what: str) -> str | None:
    """What is missing of a compiler chosen by ``$variable`` or found on PATH as one of ``names`` (None: found)."""
    chosen = os.environ.get(variable)
    if chosen:
        return None if shutil.which(chosen) else f"the {what} {variable}={chosen} (not found)"
    if any(shutil.which(name) for name in names):
        return None
    return f"a {what} ({' or '.join(names)} on PATH, or {variable})"


def missing_for_compile(device_type: str) -> list[str]:
    """What inductor would lack here to compile for ``device_type`` ("cuda" or "cpu"); empty when all is there
    or when another backend, which builds nothing, is selected."""
    if compile_backend() != "inductor":
        return []
    missing = []
    if device_type == "cuda":
        if importlib.util.find_spec("triton") is None:
            missing.append("the triton package (inductor writes its GPU kernels in it)")
        missing.append(_compiler("CC", ("gcc", "clang"), "C compiler"))
    else:
        missing.append(_compiler("CXX", ("g++", "clang++"), "C++ compiler"))
    header = os.path.join(sysconfig.get_paths()["include"], "Python.h")
    if not os.path.isfile(header):
        missing.append(f"Python's development headers ({header})")
    return [item for item in missing if item]


def check_compile_toolchain(device_type: str, flag: str = "--compile") -> None:
    """Raise one paragraph naming what ``flag`` lacks on this machine and the flag to drop (nothing else changes)."""
    missing = missing_for_compile(device_type)
    if missing:
        raise RDError(f"{flag} needs, for torch.compile's inductor backend on {device_type}, "
                      f"{' and '.join(missing)}, which this machine lacks. Drop {flag} (the same recipe then runs "
                      f"eagerly, a little slower), or install what is missing and run again; nothing was written")
