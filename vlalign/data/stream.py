"""Streaming batch source: rows read as they are needed, memory independent of the dataset's size.

Per epoch the raw rows (a ``datasets.IterableDataset``, see :mod:`vlalign.data.sources`) are shuffled by
``datasets`` (shard order + a seeded buffer of ``shuffle_buffer`` rows; the seed is ``seed + epoch``),
split between ranks with ``datasets.distributed.split_dataset_by_node``, then sent in small chunks to
worker processes (:class:`~vlalign.data.workers.OrderedPool`) that run the format adapter, the row
checks (images fully decoded) and the encoder. Results come back in stream order, so the batches are
the same whatever ``num_workers`` is.

Exact resume: the source remembers, for the last row of the last batch it handed out, its epoch, its
position in this rank's epoch stream and which of the row's records it was. Restarting the same
pipeline (same seed, buffer, ranks) and skipping that many raw rows — reading them, not checking or
encoding them — continues with exactly the rows an uninterrupted run would have used next.

Bad rows: with ``on_bad_rows="error"`` the first one stops the run with its file, row, field and fix
(streaming cannot list them all up front: ``vlalign data validate --streaming`` does, in one pass of
constant memory); with ``"skip"`` they are left out, counted, and appended to ``report_path`` (JSONL).
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from datasets.distributed import split_dataset_by_node

from vlalign.data.collate import Batch, CollateConfig, CollateError, collate
from vlalign.data.loader import RecordEncoder
from vlalign.data.memory import RowTrimmer
from vlalign.data.sources import RawSource, SourceSpec, open_source
from vlalign.data.transform import ConvertSpec, convert_stream_row, decode_record, undecoded
from vlalign.data.validate import DataError, RowError, convert_spec, detect_formats, image_limits
from vlalign.data.workers import OrderedPool, worker_state


@dataclass
class Item:
    """One streamed record (or bad row) with where it sits in the stream."""

    epoch: int
    pos: int  # index of its raw row in this rank's stream of the epoch
    sub: int  # which record of that raw row
    file: str
    row: int
    status: str  # ok | bad | skipped
    problems: list[list[str]]
    encoded: Any = None


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def _convert_and_encode(chunk: list[tuple[int, dict[str, Any]]]) -> list[Item]:
    """Worker task: raw rows → adapter + checks → encoded records (or their problems)."""
    state = worker_state()
    if multiprocessing.parent_process() is not None:  # a worker: its own heap of decoded images to trim
        state.setdefault("trimmer", RowTrimmer()).count(len(chunk))
    spec: ConvertSpec = state["spec"]
    encoder: RecordEncoder = state["encoder"]
    out = []
    for pos, raw in chunk:
        for sub, canon in enumerate(convert_stream_row(raw, spec)):
            problems = json.loads(canon["__problems__"]) if canon["__problems__"] else []
            item = Item(-1, pos, sub, canon["__file__"], int(canon["__row__"]), canon["__status__"], problems)
            if item.status == "ok":
                try:
                    item.encoded = encoder(decode_record(canon["record"], canon["images"]), -1)
                except (CollateError, OSError, ValueError, SyntaxError) as exc:  # a bad image decodes here
                    item.status = "bad"
                    item.problems.append(["<encode>", f"{type(exc).__name__}: {exc}",
                                          "fix or replace the image, or raise data.max_length", "error"])
            out.append(item)
    return out


class StreamSource:
    """Micro-batches of a streamed dataset for one rank; see the module docstring.

    The training loop calls ``micro_batches(step)`` for consecutive steps, saves ``state_dict()`` with
    each checkpoint (one per rank) and calls ``load_state_dict`` on resume.
    """

    def __init__(self, raw: RawSource, spec: ConvertSpec, encoder: RecordEncoder, *, micro_batch: int,
                 micro_batches_per_step: int = 1, rank: int = 0, world: int = 1, seed: int = 0,
                 shuffle_buffer: int = 1000, num_workers: int = 0, on_bad_rows: str = "error",
                 report_path: str | Path | None = None, chunk: int = 8) -> None:
        if on_bad_rows not in ("error", "skip"):
            raise ValueError(f"on_bad_rows={on_bad_rows!r}: use 'error' or 'skip'")
        self.raw, self.spec, self.encoder = raw, spec, encoder
        self.micro, self.accum = micro_batch, micro_batches_per_step
        self.rank, self.world, self.seed, self.shuffle_buffer = rank, world, seed, shuffle_buffer
        self.num_workers, self.on_bad_rows, self.chunk = num_workers, on_bad_rows, chunk
        self.report_path = Path(report_path) if report_path else None
        self.epoch, self.pos, self.sub = 0, 0, 0  # where the next step starts
        self.next_step, self.records = 0, 0
        self.bad_rows = 0
        self._items: Iterator[Item] | None = None
        self._pool: OrderedPool | None = None
        self._trimmer = RowTrimmer()

    # ---- the stream ----------------------------------------------------------------------------

    def raw_epoch(self, epoch: int) -> Any:
        """This rank's raw rows of ``epoch``, in the order every run with this seed sees them."""
        ds = self.raw.dataset
        if self.shuffle_buffer > 1:
            ds = ds.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
            ds.set_epoch(epoch)
        if self.world > 1:
            ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world)
        return undecoded(ds)

    def _stream(self, epoch: int, pos: int, sub: int) -> Iterator[Item]:
        if self._pool is None:
            self._pool = OrderedPool(self.num_workers, {"spec": self.spec, "encoder": self.encoder})
        while True:
            rows = enumerate(itertools.islice(iter(self.raw_epoch(epoch)), pos, None), start=pos)
            chunks = _chunks(rows, self.chunk)
            n_good = 0
            for items in self._pool.imap(_convert_and_encode, chunks):
                self._trimmer.count(len(items))
                for item in items:
                    if item.pos == pos and item.sub < sub:
                        continue  # records of a half-used row that the last run already trained on
                    item.epoch = epoch
                    n_good += item.status == "ok"
                    yield item
            if n_good == 0 and pos == 0:
                raise ValueError(f"{self.raw.label}: rank {self.rank} of {self.world} got no usable rows in epoch "
                                 f"{epoch}; check the data (vlalign data validate) or use fewer ranks")
            epoch, pos, sub = epoch + 1, 0, 0

    def _bad(self, item: Item) -> None:
        errors = [RowError(item.file, item.row if item.row >= 0 else None, f, r, x)
                  for f, r, x, level in item.problems if level == "error"]
        if item.status == "skipped" or not errors:
            return
        if self.on_bad_rows == "error":
            raise DataError(
                f"{self.raw.label}: bad row in the stream:\n" + "\n".join("  " + e.line() for e in errors)
                + "\nFix it, list every bad row first with `vlalign data validate --streaming`, or set "
                "data.on_bad_rows=skip to leave bad rows out (they are written to data.bad_rows_report).",
                errors,
            )
        self.bad_rows += 1
        if self.report_path is not None:
            self.report_path.parent.mkdir(parents=True, exist_ok=True)
            with self.report_path.open("a", encoding="utf-8") as fh:
                for e in errors:
                    fh.write(json.dumps(asdict(e), ensure_ascii=True) + "\n")

    # ---- the interface the loop uses -----------------------------------------------------------

    def micro_batches(self, step: int) -> list[Batch]:
        """This rank's ``micro_batches_per_step`` micro-batches of ``micro_batch`` good records."""
        if step != self.next_step:
            raise ValueError(f"a stream is read in order: asked for step {step}, the next one is {self.next_step} "
                             "(on resume, call load_state_dict with the checkpoint's state first)")
        if self._items is None:
            self._items = self._stream(self.epoch, self.pos, self.sub)
        batches, last = [], None
        for _ in range(self.accum):
            encoded = []
            while len(encoded) < self.micro:
                item = next(self._items)
                if item.status != "ok":
                    self._bad(item)
                    continue
                item.encoded.row = self.records  # a running index: unique within the run
                self.records += 1
                encoded.append(item.encoded)
                last = item
            batches.append(collate(encoded, self.encoder.processor))
        self.epoch, self.pos, self.sub = last.epoch, last.pos, last.sub + 1
        self.next_step += 1
        return batches

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "stream", "epoch": self.epoch, "pos": self.pos, "sub": self.sub, "next_step": self.next_step,
                "records": self.records, "bad_rows": self.bad_rows, "rank": self.rank, "world": self.world,
                "seed": self.seed, "shuffle_buffer": self.shuffle_buffer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "stream":
            raise ValueError(f"cannot resume a stream from a {state.get('kind')!r} state")
        mine = {k: getattr(self, k) for k in ("rank", "world", "seed", "shuffle_buffer")}
        theirs = {k: state.get(k) for k in mine}
        if mine != theirs:
            raise ValueError(f"cannot resume this stream exactly: the checkpoint was written with {theirs}, "
                             f"this run has {mine}; resume with the same ranks, seed and data.shuffle_buffer")
        self.epoch, self.pos, self.sub = int(state["epoch"]), int(state["pos"]), int(state["sub"])
        self.next_step, self.records = int(state["next_step"]), int(state["records"])
        self.bad_rows = int(state.get("bad_rows", 0))
        self._items = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def stream_source(data: Any, processor: Any, kind: str, *, micro_batch: int, micro_batches_per_step: int = 1,
                  rank: int = 0, world: int = 1, seed: int = 0, max_length: int | None = None,
                  max_pixels: int | None = None, extra: str | None = None, report_path: str | Path | None = None,
                  **overrides: Any) -> StreamSource:
    """A :class:`StreamSource` for a :class:`~vlalign.data.config.DataConfig` (its ``shuffle_buffer``,
    ``num_workers``, ``on_bad_rows``, ``max_length`` ... apply; ``overrides`` replace fields)."""
    cfg = data.model_copy(update=overrides) if overrides else data
    raw = open_source(SourceSpec(cfg.train, cfg.split, cfg.subset, cfg.revision, True, cfg.cache_dir, cfg.image_root))
    formats, _ = detect_formats(raw, cfg.format)
    limits = image_limits(True, {k: getattr(cfg, k) for k in ("max_image_pixels", "max_image_side", "allow_network")})
    # The encoder decodes every image right after the checks: they read headers and limits only, and a
    # decoding failure surfaces from the encoder as the same row's error.
    spec = convert_spec(raw, formats, cfg.format_options, replace(limits, decode=False))
    ccfg = CollateConfig(cfg.max_length if max_length is None else max_length, max_pixels,
                         assistant_turns=cfg.assistant_turns)
    encoder = RecordEncoder(processor, ccfg, kind, extra)
    return StreamSource(raw, spec, encoder, micro_batch=micro_batch, micro_batches_per_step=micro_batches_per_step,
                        rank=rank, world=world, seed=seed, shuffle_buffer=cfg.shuffle_buffer,
                        num_workers=cfg.num_workers, on_bad_rows=cfg.on_bad_rows,
                        report_path=report_path or cfg.bad_rows_report)
