"""Starting an onnxruntime session: the version gate, providers, session options, thread pinning.

Everything here is about onnxruntime and the machine, nothing about the model's interface, so the
LM facade and the gradient graph (a second session over another file) start sessions the same way.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort

from ortrefine.errors import BundleError, ProviderUnavailableError
from ortrefine.runtime.bundle import Bundle

log = logging.getLogger(__name__)

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# The fused graph's GroupQueryAttention takes `query_seqlens` (batched multi-token steps on a cache),
# which onnxruntime 1.31 does not know; onnxruntime-gpu on the index here stops at 1.31.1.
FUSED_MIN_ORT = (1, 32)
# a graph input's declared type → the numpy dtype fed to it (anything else: float32)
ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def ort_version() -> tuple[int, ...]:
    """onnxruntime's version as integers (dev/rc suffixes dropped), so it compares with a tuple."""
    parts = []
    for piece in ort.__version__.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece[:1].isdigit() else ""
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def graph_kind(bundle: Bundle) -> str | None:
    """'fused' (ortrefine's GroupQueryAttention graph), 'optimum', or None for older bundles."""
    return (bundle.manifest.get("graph") or {}).get("kind")


def check_graph_supported(bundle: Bundle) -> None:
    """Refuse a fused bundle on an onnxruntime too old for it, naming both fixes."""
    if graph_kind(bundle) == "fused" and ort_version() < FUSED_MIN_ORT:
        need = ".".join(map(str, FUSED_MIN_ORT))
        raise BundleError(
            f"{bundle.path} has ortrefine's fused graph, which needs onnxruntime >= {need} (this is {ort.__version__}); "
            f"upgrade onnxruntime, or re-export the model with `ortrefine export ... --graph optimum`"
        )


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def one_cpu_per_core() -> list[int]:
    """Logical CPUs this process may run on, one per physical core (first sibling), in order.

    From /sys topology (core_id, physical_package_id); where it cannot be read, every allowed CPU
    counts as a core.
    """
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    seen: set[tuple[str, str]] = set()
    picked = []
    for cpu in allowed:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            key = ((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip())
        except OSError:
            key = ("", str(cpu))
        if key not in seen:
            seen.add(key)
            picked.append(cpu)
    return picked


def pin_intra_op_threads(opts: ort.SessionOptions, threads: int | None) -> int | None:
    """Pin ONNX Runtime's intra-op workers one per physical core; returns the thread count used.

    The calling thread (ORT never pins it) keeps the first core; worker k gets core k. Opt-in: on
    the 2-core box it gained nothing once the A/B controlled the sessions' load order
    (benchmarks/RESULTS.md), and on a machine shared with other busy processes a pinned worker
    cannot move away from them. None (and nothing set) when there are fewer cores than threads or
    only one thread.
    """
    cores = one_cpu_per_core()
    n = threads or len(cores)
    if n < 2 or n > len(cores):
        log.info("not pinning %s intra-op threads to %d core(s)", n, len(cores))
        return None
    opts.intra_op_num_threads = n
    # ORT numbers logical processors from 1 in this setting ("1" pins to CPU 0)
    opts.add_session_config_entry("session.intra_op_thread_affinities", ";".join(str(c + 1) for c in cores[1:n]))
    return n


def wanted_provider(provider: str) -> str:
    """'cpu' or 'cuda': what `provider` (auto | cpu | cuda) asks for on this onnxruntime."""
    return "cuda" if provider == "cuda" or (provider == "auto" and PROVIDERS["cuda"] in available_providers()) else "cpu"


def _check_provider(provider: str) -> None:
    """Fail before loading: an asked-for CUDA must never fall back to the CPU silently."""
    if provider not in ("auto", *PROVIDERS):
        raise ProviderUnavailableError(f"unknown provider {provider!r}; use one of: auto, cpu, cuda")
    have = available_providers()
    if provider == "cuda" and PROVIDERS["cuda"] not in have:
        raise ProviderUnavailableError(
            f"the CUDA execution provider is not available (this onnxruntime has: {', '.join(have)}); "
            "install onnxruntime-gpu in place of onnxruntime (pip uninstall -y onnxruntime && "
            "pip install 'ortrefine[gpu]'), or use --provider cpu"
        )


def _load_error(model_file: Path, e: Exception, fix: str) -> BundleError:
    """One line for a file onnxruntime would not load; the remedy for a non-UTF-8 path is a rename.

    onnxruntime takes the path as UTF-8 text: a name that is not (undecodable bytes) cannot be opened
    at all, and re-exporting to the same folder fails the same way.
    """
    bad = [os.fsencode(part).decode("utf-8", "backslashreplace") for part in Path(model_file).parts
           if os.fsencode(part).decode("utf-8", "replace") != part]
    if bad:
        return BundleError(f"{os.fsencode(model_file).decode('utf-8', 'backslashreplace')}: the path is not valid UTF-8 "
                           "and onnxruntime opens only UTF-8 paths; rename " + bad[0] + " to a UTF-8 name")
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return BundleError(f"{model_file}: onnxruntime cannot load it ({first}); {fix}")


def make_session(
    model_file: Path,
    provider: str = "auto",
    threads: int | None = None,
    configure: "Callable[[ort.SessionOptions], None] | None" = None,
    fix: str = "re-export the bundle",
    pin_threads: bool = False,
) -> tuple[ort.InferenceSession, str]:
    """Session on the asked provider; fail fast (never fall back silently) when it is missing.

    configure: extra session options (the gradient graph turns the arena and prepacking off).
    fix: the remedy named when the file cannot be loaded.
    pin_threads: CPU: pin the intra-op workers one per physical core (`pin_intra_op_threads`).
    """
    _check_provider(provider)
    wanted = wanted_provider(provider)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if pin_threads and wanted == "cpu":
        pin_intra_op_threads(opts, threads)
    if configure is not None:
        configure(opts)
    providers = [PROVIDERS["cuda"], PROVIDERS["cpu"]] if wanted == "cuda" else [PROVIDERS["cpu"]]
    try:
        session = ort.InferenceSession(str(model_file), sess_options=opts, providers=providers)
    except Exception as e:  # ORT raises its own Fail/InvalidProtobuf types; all mean a bad file
        raise _load_error(model_file, e, fix) from None
    got = session.get_providers()[0]
    if wanted == "cuda" and got != PROVIDERS["cuda"]:
        if provider == "cuda":
            raise ProviderUnavailableError(
                "onnxruntime-gpu is installed but the CUDA provider failed to start (CUDA/cuDNN "
                "libraries missing or no GPU); fix the CUDA install or use --provider cpu"
            )
    return session, "cuda" if got == PROVIDERS["cuda"] else "cpu"
