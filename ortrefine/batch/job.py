"""A batch job: one model load, every record of a JSONL file, resumable by id.

`Predictor` is the unit of work in both places it runs (vLLM's offline-inference predictor shape):
its constructor loads the bundle once, `process` maps records to output records, and `__call__`
maps a Ray Data batch. The local job and every Ray actor run the same code, so their outputs
are the same records.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from ortrefine.batch.config import EVAL_FIELDS, RECORD_FIELDS, BatchConfig
from ortrefine.batch.records import InputRecord, OutputLog, check_paths, failed_before, pending, read_input
from ortrefine.errors import OrtRefineError

if TYPE_CHECKING:
    from ortrefine.runtime.session import LM

log = logging.getLogger(__name__)


class RecordError(OrtRefineError):
    """A record that cannot be processed as written (not JSON, no prompt, unknown fields)."""


def error_record(rid: Any, e: BaseException) -> dict[str, Any]:
    return {"id": rid, "error": {"type": type(e).__name__, "message": str(e)}}


def finite(x: Any) -> Any:
    """Non-finite floats as None: every line is strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return x


class Predictor:
    """Loads the bundle once; turns input records into output records.

    A record: {"id": ..., "prompt": "...", optional "system", and for refine "initial",
    "keywords", "reference"}. Output: {"id", "text", "ids", "prompt_ids", "logprob",
    "token_logprobs", "finish_reason", "strategy"} (generate) or {"id", **RefineResult.to_dict()}
    (refine); a record that fails is {"id", "error": {"type", "message"}} and the job goes on.
    """

    def __init__(self, config: BatchConfig, lm: "LM | None" = None) -> None:
        import ortrefine

        self.cfg = config
        self.lm = lm if lm is not None else ortrefine.load(config.model, provider=config.provider, threads=config.threads,
                                                           pin_threads=config.pin_threads, hugepages=config.hugepages)
        self._scheduler = None

    # -- Ray Data ------------------------------------------------------------------------------
    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        """batch["line"]: input records as JSON text → {"out": output records as JSON text}."""
        records = []
        for line in batch["line"]:
            rec = json.loads(str(line))
            records.append(InputRecord(rec["id"], 0, rec["record"], rec["problem"]))
        return {"out": [json.dumps(out, ensure_ascii=False) for out in self.process(records)]}

    # -- records ---------------------------------------------------------------------------------
    def process(self, records: Iterable[InputRecord]) -> Iterator[dict[str, Any]]:
        """Output records, each as soon as it is done (with batching, not in input order)."""
        if self.cfg.task == "generate" and self.cfg.generation.strategy in ("greedy", "sample") and self.cfg.batch_size > 1:
            yield from self._batched(records)
            return
        for r in records:
            yield finite(self.one(r))

    def one(self, r: InputRecord) -> dict[str, Any]:
        try:
            prompt, system, extra = self._fields(r)
            if self.cfg.task == "refine":
                return {"id": r.id, **self._refine(prompt, system, extra)}
            from ortrefine.runtime.decoding import generate

            ids = self.lm.encode_prompt(prompt, chat=self.cfg.chat, max_new_tokens=self.cfg.generation.max_new_tokens, system=system)
            g = generate(self.lm, ids, self.cfg.generation)
            return _generated(r.id, g.prompt_ids, g.ids, g.text, g.token_logprobs, g.finish_reason, g.strategy)
        except OrtRefineError as e:
            return error_record(r.id, e)

    def _fields(self, r: InputRecord) -> tuple[str, str | None, dict[str, Any]]:
        if r.problem is not None:
            raise RecordError(r.problem)
        rec = r.record or {}
        extra = sorted(set(rec) - RECORD_FIELDS - EVAL_FIELDS)
        if extra:
            raise RecordError(f"unknown field(s) {', '.join(extra)}; a record has {', '.join(sorted(RECORD_FIELDS))}")
        prompt = rec.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise RecordError("the record has no prompt (a non-empty string under \"prompt\")")
        system = rec.get("system", self.cfg.system)
        if system is not None and not isinstance(system, str):
            raise RecordError("system must be a string")
        if system is not None and not self.cfg.chat:
            raise RecordError("the record has a system message but the job has no --chat")
        if self.cfg.task != "refine" and set(rec) & {"initial", "keywords", "reference"}:
            raise RecordError("initial, keywords and reference are for --task refine")
        return prompt, system, {k: rec[k] for k in ("initial", "keywords", "reference") if k in rec}

    def _refine(self, prompt: str, system: str | None, extra: dict[str, Any]) -> dict[str, Any]:
        from ortrefine.runtime.refine import refine

        cfg = self.cfg.refine
        changes: dict[str, Any] = {"chat": self.cfg.chat, "system": system}
        if "keywords" in extra:
            kw = extra["keywords"]
            changes["keywords"] = tuple(v.strip() for v in kw.split(",") if v.strip()) if isinstance(kw, str) else tuple(kw)
        for k in ("initial", "reference"):
            if k in extra:
                changes[k] = extra[k]
        return refine(self.lm, prompt, replace(cfg, **changes)).to_dict()

    def _batched(self, records: Iterable[InputRecord]) -> Iterator[dict[str, Any]]:
        """Greedy/sampled decoding of many records in shared passes (the server's scheduler)."""
        from ortrefine.serve.scheduler import DecodeParams, Result, Scheduler

        g = self.cfg.generation
        if self._scheduler is None:
            self._scheduler = Scheduler(self.lm, max_batch=self.cfg.batch_size, max_queue=4 * self.cfg.batch_size, name="batch")
        params = DecodeParams(max_tokens=g.max_new_tokens, temperature=0.0 if g.strategy == "greedy" else g.temperature,
                              top_p=g.top_p, top_k=g.top_k, seed=g.seed, stop=g.stop)
        done: queue.Queue = queue.Queue()
        window = 2 * self.cfg.batch_size  # records queued ahead of the batch, so it never runs dry
        in_flight = 0
        for r in records:
            try:
                prompt, system, _ = self._fields(r)
                ids = self.lm.encode_prompt(prompt, chat=self.cfg.chat, max_new_tokens=g.max_new_tokens, system=system)
            except OrtRefineError as e:
                yield error_record(r.id, e)
                continue
            self._scheduler.submit(ids, params, lambda obj, rid=r.id: done.put((rid, obj)) if isinstance(obj, Result) else None)
            in_flight += 1
            while in_flight >= window or not done.empty():
                yield self._result(*done.get())
                in_flight -= 1
        for _ in range(in_flight):
            yield self._result(*done.get())

    def _result(self, rid: Any, res: Any) -> dict[str, Any]:
        if res.finish_reason == "error":
            return error_record(rid, OrtRefineError(f"the model failed: {res.error}"))
        return finite(_generated(rid, res.prompt_ids, res.ids, res.text, [t.logprob for t in res.tokens], res.finish_reason,
                                 self.cfg.generation.strategy))

    def close(self) -> None:
        if self._scheduler is not None:
            self._scheduler.close(drain=False)
            self._scheduler = None


def _generated(rid: Any, prompt_ids: list[int], ids: list[int], text: str, lps: list[float], reason: str, strategy: str) -> dict[str, Any]:
    return {"id": rid, "text": text, "ids": list(ids), "prompt_ids": list(prompt_ids),
            "logprob": float(sum(lps)), "token_logprobs": [float(x) for x in lps], "finish_reason": reason, "strategy": strategy}


@dataclass
class BatchSummary:
    """total: records in IN; skipped: already in OUT; written: this run; errors: error records
    written this run; repaired: bytes of a torn last line cut off; seconds: wall time;
    failed_before: skipped records that an earlier run wrote as errors (OUT is not complete
    while there are any)."""

    total: int
    skipped: int
    written: int
    errors: int
    repaired: int
    seconds: float
    failed_before: int = 0


def _progress(total: int, initial: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="rec", desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True,
                smoothing=0.1)


def write_records(out: OutputLog, records: Iterable[dict[str, Any]], bar: Any) -> tuple[int, int]:
    """Append each record as it arrives (local or from Ray's actors); (written, error records)."""
    written = errors = 0
    for rec in records:
        out.append(rec)
        written += 1
        errors += "error" in rec
        bar.update(1)
    return written, errors


def run_batch(input_path: str | Path, output_path: str | Path, config: BatchConfig, progress: bool = True,
              lm: "LM | None" = None) -> BatchSummary:
    """Process every record of INPUT whose id is not yet in OUTPUT, appending to OUTPUT."""
    t0 = time.perf_counter()
    check_paths(input_path, output_path)
    records = read_input(input_path)
    with OutputLog(output_path) as out:
        todo = pending(records, out.done)
        skipped = len(records) - len(todo)
        written = errors = 0
        if todo:
            predictor = Predictor(config, lm=lm)
            bar = _progress(len(records), skipped, progress, Path(output_path).name)
            try:
                written, errors = write_records(out, predictor.process(todo), bar)
            finally:
                bar.close()
                predictor.close()  # nothing is left in flight unless interrupted: then it is dropped
        return BatchSummary(len(records), skipped, written, errors, out.repaired, time.perf_counter() - t0,
                            failed_before(records, out.failed))
