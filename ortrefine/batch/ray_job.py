"""The batch job on Ray Data: `map_batches` over a pool of actors, each loading the bundle once.

The driver reads IN, drops the ids already in OUT, and appends every record Ray hands back to OUT
exactly as the local job does (one fsync'd line each), so a killed job resumes the same way and
IN and OUT never have to be on storage the workers share. The workers need ortrefine installed
and the bundle at the same path on every node.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from ortrefine.batch.config import BatchConfig
from ortrefine.batch.job import BatchSummary, Predictor, _progress, write_records
from ortrefine.batch.records import OutputLog, check_paths, failed_before, pending, read_input
from ortrefine.catalog import resolve_bundle_path
from ortrefine.errors import ConfigError, MissingExtraError


def _ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise MissingExtraError("--ray needs Ray Data: pip install 'ortrefine[ray]'") from None
    return ray


def run_ray(input_path: str | Path, output_path: str | Path, config: BatchConfig, address: str | None = None, workers: int = 2,
            cpus_per_worker: float = 1, progress: bool = True) -> BatchSummary:
    """Run the job on Ray: the instance already initialised in this process, else
    `ray.init(address)` (None: a new local instance; "auto" or HOST:PORT: a running cluster).

    workers: actors in the pool (each holds one copy of the model). cpus_per_worker: CPUs Ray
    reserves per actor; the actor's onnxruntime threads default to the same number.
    """
    if workers < 1 or not cpus_per_worker > 0:
        raise ConfigError("--workers must be >= 1 and --cpus-per-worker > 0")
    ray = _ray()
    t0 = time.perf_counter()
    model = resolve_bundle_path(config.model)
    if model.exists():  # actors run in another directory (and, on a cluster, resolve names on another machine)
        config = replace(config, model=str(model.resolve()))
    if config.threads is None:
        config = replace(config, threads=max(1, int(cpus_per_worker)))
    check_paths(input_path, output_path)
    records = read_input(input_path)
    with OutputLog(output_path) as out:
        todo = pending(records, out.done)
        skipped, written, errors = len(records) - len(todo), 0, 0
        if todo:
            started = not ray.is_initialized()
            if started:
                # a new local instance needs no dashboard; a running cluster refuses the option
                ray.init(address=address, log_to_driver=False, **({} if address else {"include_dashboard": False}))
            try:
                ctx = ray.data.DataContext.get_current()
                ctx.enable_progress_bars = False  # ours counts records as they reach OUT
                items = [{"line": json.dumps({"id": r.id, "record": r.record, "problem": r.problem}, ensure_ascii=False)} for r in todo]
                ds = ray.data.from_items(items).map_batches(
                    Predictor, fn_constructor_kwargs={"config": config}, batch_size=config.batch_size, batch_format="numpy",
                    compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus_per_worker)
                bar = _progress(len(records), skipped, progress, Path(output_path).name)
                try:
                    arriving = (json.loads(str(line)) for batch in ds.iter_batches(batch_size=None, batch_format="numpy")
                                for line in batch["out"])
                    written, errors = write_records(out, arriving, bar)
                finally:
                    bar.close()
            finally:
                if started:
                    ray.shutdown()
        return BatchSummary(len(records), skipped, written, errors, out.repaired, time.perf_counter() - t0,
                            failed_before(records, out.failed))
