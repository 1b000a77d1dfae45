"""Opt-in pinning of onnxruntime's intra-op workers (`load(pin_threads=True)`, `--pin-threads`)."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort
import pytest

from ortrefine.runtime import ort_session as S


def test_affinity_string_pins_workers_to_the_other_cores(monkeypatch):
    monkeypatch.setattr(S, "one_cpu_per_core", lambda: [0, 2, 4, 6])  # e.g. SMT siblings 1, 3, 5, 7 skipped
    opts = ort.SessionOptions()
    assert S.pin_intra_op_threads(opts, None) == 4
    assert opts.intra_op_num_threads == 4
    assert opts.get_session_config_entry("session.intra_op_thread_affinities") == "3;5;7"  # 1-based ids
    opts = ort.SessionOptions()
    assert S.pin_intra_op_threads(opts, 2) == 2
    assert opts.get_session_config_entry("session.intra_op_thread_affinities") == "3"
    for threads in (1, 5):  # one thread: nothing to pin; more threads than cores: left alone
        opts = ort.SessionOptions()
        assert S.pin_intra_op_threads(opts, threads) is None
        with pytest.raises(RuntimeError):  # unset: onnxruntime has no value to return
            opts.get_session_config_entry("session.intra_op_thread_affinities")


def test_one_cpu_per_core_is_within_the_allowed_set():
    cores = S.one_cpu_per_core()
    assert cores and set(cores) <= set(os.sched_getaffinity(0)) and cores == sorted(cores)


def _thread_cpus() -> list[str]:
    out = []
    for status in Path(f"/proc/{os.getpid()}/task").glob("*/status"):
        fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        out.append(fields["Cpus_allowed_list"].strip())
    return out


@pytest.mark.skipif(len(S.one_cpu_per_core()) < 2, reason="needs two physical cores")
def test_pinned_session_worker_runs_on_one_core(tiny_bundles):
    import ortrefine

    cores = S.one_cpu_per_core()
    before = _thread_cpus().count(str(cores[1]))
    lm = ortrefine.load(tiny_bundles["llama"], provider="cpu", threads=2, pin_threads=True)
    assert _thread_cpus().count(str(cores[1])) == before + 1  # one new thread, allowed on that CPU only
    plain = ortrefine.load(tiny_bundles["llama"], provider="cpu", threads=2)
    ids = lm.encode_prompt("Once upon a time")
    assert lm.generate(ids, max_new_tokens=6).ids == plain.generate(ids, max_new_tokens=6).ids


def test_cli_flag_reaches_the_session(tiny_bundles, monkeypatch):
    from click.testing import CliRunner

    from ortrefine.cli.main import cli

    seen = []
    real = S.pin_intra_op_threads
    monkeypatch.setattr(S, "pin_intra_op_threads", lambda opts, threads: seen.append(threads) or real(opts, threads))
    m = str(tiny_bundles["llama"])
    r = CliRunner().invoke(cli, ["generate", "Once upon a time", "-m", m, "--max-new-tokens", "4", "--pin-threads"])
    assert r.exit_code == 0, r.output
    assert seen == [None]
    r = CliRunner().invoke(cli, ["generate", "Once upon a time", "-m", m, "--max-new-tokens", "4"])
    assert r.exit_code == 0 and seen == [None]  # not without the flag


@pytest.mark.parametrize("shape", [(5, 7, 33), (1, 9, 33), (9, 33), (33,)])
def test_parallel_logsumexp_equals_one_thread(monkeypatch, shape):
    """Rows split over threads (any leading axis, views not copies) give the one-thread values."""
    import numpy as np

    from ortrefine.runtime import logprobs as L

    monkeypatch.setattr(L, "PARALLEL_MIN_ELEMENTS", 1)
    monkeypatch.setattr(L, "_workers", lambda: 3)
    x = (np.random.default_rng(0).standard_normal(shape) * 5).astype(np.float32)
    for arr in (x, x[..., 1:, :] if x.ndim == 3 else x):
        np.testing.assert_array_equal(L.logsumexp(arr), L._logsumexp_rows(arr))
    ref = np.log(np.exp(x.astype(np.float64)).sum(-1))
    np.testing.assert_allclose(L.logsumexp(x), ref, rtol=1e-5)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_parallel_logsumexp_works_in_a_forked_child(monkeypatch):
    """The pool's threads do not survive fork; the child must start its own, not wait forever."""
    import multiprocessing as mp

    import numpy as np

    from ortrefine.runtime import logprobs as L

    monkeypatch.setattr(L, "PARALLEL_MIN_ELEMENTS", 1)
    monkeypatch.setattr(L, "_workers", lambda: 2)
    x = np.random.default_rng(1).standard_normal((4, 8, 33)).astype(np.float32)
    L.logsumexp(x)  # the parent's pool exists now
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(L.logsumexp, (x,)).get(timeout=30)
    np.testing.assert_array_equal(got, L._logsumexp_rows(x))
