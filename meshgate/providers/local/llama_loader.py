"""Opening a GGUF with llama.cpp: thread count and the CPU's extra weight layouts, chosen once here.

llama.cpp can repack weights into "extra buffer types" at load time (AMX tiles on Intel CPUs that
have them, interleaved blocks for AVX2/AVX-512). On this project's CI machines (Xeon with AMX) the
AMX path of llama-cpp-python 0.3.36 crashes the process (SIGSEGV) on the first prompt of more than
one token with Qwen2.5's Q4_K_M file (a known, machine-dependent crash in `ggml_backend_amx_mul_mat`
with Q4_K_M weights, ggml-org/llama.cpp#20824, unfixed), so `auto` leaves the extra buffers off on
CPUs that report AMX and on everywhere else. `llama_cpp.Llama` has no parameter for it; its model parameters are
read from `llama_model_default_params()` at construction, which is wrapped here, under a lock,
only for the duration of one construction.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, Literal

ExtraBuffers = Literal["auto", "on", "off"]

_construct_lock = threading.Lock()


@cache
def cpu_has_amx() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(line.startswith("flags") and " amx_tile" in line for line in text.splitlines())


def use_extra_buffers(choice: ExtraBuffers) -> bool:
    return choice == "on" or (choice == "auto" and not cpu_has_amx())


def default_threads(contexts: int) -> int:
    """Every core this process may run on, shared by the model's contexts (llama-cpp-python's own
    default, half the cores, leaves one of two idle here: 14 instead of 25 tokens/s)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // contexts)


@contextlib.contextmanager
def _model_defaults(extra_buffers: bool) -> Iterator[None]:
    import llama_cpp.llama_cpp as native

    original = native.llama_model_default_params

    def defaults() -> Any:
        params = original()
        params.use_extra_bufts = extra_buffers
        return params

    with _construct_lock:
        native.llama_model_default_params = defaults
        try:
            yield
        finally:
            native.llama_model_default_params = original


def open_llama(path: Path, n_ctx: int, threads: int, extra_buffers: ExtraBuffers) -> Any:
    """A `llama_cpp.Llama` context for `path` (raises what llama-cpp-python raises on a bad file)."""
    from llama_cpp import Llama

    with _model_defaults(use_extra_buffers(extra_buffers)):
        return Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
