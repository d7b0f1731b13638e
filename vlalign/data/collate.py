"""Records → model inputs for VLM training: tokenize, preprocess images once, pad, mask.

WHY a dedicated module: the popular trainers bury collation inside the trainer, and the classic VLM
bugs live here — truncation cutting through image tokens ("image features and image tokens do not
match"), images processed twice per pair, response masks implied by padding ids. Here:

- each record is encoded once (:mod:`vlalign.data.encode`: chat template, images processed once per
  record and shared by its responses, truncation that never cuts image tokens);
- every batch carries an explicit ``response_mask`` (B, T) and ``attention_mask`` (B, T); padding is on
  the right and never inferred from token ids.

Layout of a pair batch: rows ``0..B-1`` are the chosen responses, rows ``B..2B-1`` the rejected ones,
so one forward computes both (see :func:`vlalign.trainers.common.forward_logps`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vlalign.data.encode import (  # noqa: F401 (re-exported: callers build and encode through this module)
    IMAGE_KEYS,
    RESPONSE_FIELDS,
    CollateConfig,
    CollateError,
    Encoded,
    _tokenizer,
    default_max_pixels,
    encode_prompt,
    encode_record,
    encode_response,
    fit_response,
    open_images,
    processor_ids,
)
from vlalign.data.messages import record_messages
from vlalign.data.workers import OrderedPool, in_worker, worker_state


# Processor outputs that describe images; they are concatenated (not padded) when batching.
@dataclass
class Batch:
    """Padded model inputs plus the masks and bookkeeping the trainers need.

    ``inputs`` goes straight into ``model(**inputs)``; ``response_mask`` (N, T) marks the tokens whose
    log-probs are trained; ``segment_mask`` (N, T), when present, marks tokens inside annotated segments
    (RLHF-V dense DPO).
    """

    inputs: dict[str, torch.Tensor]
    response_mask: torch.Tensor  # (N, T) bool
    rows: list[int]  # dataset row index of each record (B of them; N = B or 2B)
    ids: list[str]
    segment_mask: torch.Tensor | None = None  # (N, T) bool

    @property
    def num_records(self) -> int:
        return len(self.rows)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            inputs={k: v.to(device) for k, v in self.inputs.items()},
            response_mask=self.response_mask.to(device),
            rows=self.rows,
            ids=self.ids,
            segment_mask=None if self.segment_mask is None else self.segment_mask.to(device),
        )


# --------------------------------------------------------------------------------------------- batch


def _pad_id(processor: Any) -> int:
    tok = _tokenizer(processor)
    for cand in (tok.pad_token_id, tok.eos_token_id):
        if cand is not None:
            return int(cand)
    return 0


def _pad_images(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-row image stacks of different lengths (Idefics3: (1, num_images, C, H, W) and its
    pixel_attention_mask) padded with all-zero images along dim 1, which the model skips as padding."""
    n = max(t.shape[1] for t in tensors)
    out = []
    for t in tensors:
        if t.shape[1] < n:
            pad = torch.zeros((t.shape[0], n - t.shape[1], *t.shape[2:]), dtype=t.dtype)
            t = torch.cat([t, pad], dim=1)
        out.append(t)
    return out


def _concat_images(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-record image tensors → one batch: images are concatenated along dim 0 in row order
    (LLaVA: (num_images, C, H, W); Qwen2-VL: (num_patches, D) + grid (num_images, 3)); per-row
    stacks (Idefics3: (1, num_images, C, H, W)) are first padded to the batch's largest image count."""
    keys = [k for k in IMAGE_KEYS if any(k in it for it in items)]
    out = {}
    for k in keys:
        tensors = [it[k] for it in items if k in it]
        per_row_stacks = tensors[0].ndim >= 4 and len({t.shape[2:] for t in tensors}) == 1
        if per_row_stacks and len({t.shape[1] for t in tensors}) > 1:
            tensors = _pad_images(tensors)
        out[k] = torch.cat(tensors, dim=0)
    return out


def pad_rows(
    sequences: Sequence[tuple[Any, ...]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prompt ids, response ids, segment flags[, trained prompt flags]) per row → right-padded tensors.

    The optional 4th item marks prompt tokens that are trained too (earlier assistant turns of a
    conversation, ``assistant_turns=all``). Returns input_ids (N, T), attention_mask (N, T),
    response_mask (N, T), segment_mask (N, T).
    """
    T = max(len(seq[0]) + len(seq[1]) for seq in sequences)
    N = len(sequences)
    input_ids = torch.full((N, T), pad_id, dtype=torch.long)  # (N, T)
    attention = torch.zeros((N, T), dtype=torch.long)  # (N, T)
    response = torch.zeros((N, T), dtype=torch.bool)  # (N, T)
    segment = torch.zeros((N, T), dtype=torch.bool)  # (N, T)
    for i, (p, r, flags, *rest) in enumerate(sequences):
        n = len(p) + len(r)
        input_ids[i, :n] = torch.tensor(p + r, dtype=torch.long)
        attention[i, :n] = 1
        response[i, len(p) : n] = True
        if rest and rest[0]:
            response[i, : len(p)] = torch.tensor(rest[0], dtype=torch.bool)
        if flags:
            segment[i, len(p) : n] = torch.tensor(flags, dtype=torch.bool)
    return input_ids, attention, response, segment


def collate(encoded: Sequence[Encoded], processor: Any) -> Batch:
    """Encoded records → one :class:`Batch`, response-major: all first responses, then all second ones.

    For pairs that is ``[chosen_0..chosen_{B-1}, rejected_0..rejected_{B-1}]``; the image tensors of the
    B records are computed once and repeated (a cheap concat) so each row sees its own record's image.
    """
    if not encoded:
        raise ValueError("cannot collate an empty batch")
    k = len(encoded[0].responses)
    rows = [(e.prompt_ids, e.responses[j], e.token_flags[j], e.prompt_loss) for j in range(k) for e in encoded]
    input_ids, attention, response, segment = pad_rows(rows, _pad_id(processor))
    images = _concat_images([e.block_images.get(j, e.image_inputs) for j in range(k) for e in encoded])
    inputs = {"input_ids": input_ids, "attention_mask": attention, **images}
    inputs.update(token_type_inputs(processor, input_ids))
    return Batch(
        inputs=inputs,
        response_mask=response,
        rows=[e.row for e in encoded],
        ids=[e.id for e in encoded],
        segment_mask=segment if bool(segment.any()) else None,
    )


def token_type_inputs(processor: Any, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token modality ids for processors whose models need them.

    Qwen2-VL-style processors return ``mm_token_type_ids`` (0 text, 1 image, 2 video), which the model
    uses to place M-RoPE positions; the collator builds rows from token ids, so it rebuilds them for
    the padded batch. Other processors get nothing extra.
    """
    if "mm_token_type_ids" not in getattr(processor, "model_input_names", ()):
        return {}
    types = torch.zeros_like(input_ids, dtype=torch.int32)  # (N, T)
    for value, attr in ((1, "image_token_id"), (2, "video_token_id")):
        token = getattr(processor, attr, None)
        if token is not None:
            types[input_ids == token] = value
    return {"mm_token_type_ids": types}


class EncodedDataset:
    """Records + processor → encoded items on demand (each record's images processed once per access).

    Encoding is lazy; ``check_all`` encodes every row once up front so a bad row fails before training
    starts, not at step 5,000. Encoded rows are kept in memory up to ``cache_mib`` MiB of tensors (0 =
    no cache), so a multi-epoch run tokenizes and preprocesses each image once instead of on every step
    (on the CPU demo that was ~20% of a step); rows beyond the budget are encoded on demand as before.
    Rows that show the same images share one pixel tensor in the cache.
    """

    def __init__(
        self,
        records: Sequence[Any],
        processor: Any,
        cfg: CollateConfig,
        kind: str,
        extra: str | None = None,
        cache_mib: float = 512.0,
    ) -> None:
        if kind not in RESPONSE_FIELDS:
            raise ValueError(f"unknown record kind {kind!r}; known: {', '.join(RESPONSE_FIELDS)}")
        if extra is not None and extra not in EXTRA_BLOCKS:
            raise ValueError(f"unknown extra block {extra!r}; known: {', '.join(EXTRA_BLOCKS)}")
        # A Sequence (e.g. load_records' RecordView) is kept as is: records decode on access, not all at once.
        self.records = records if isinstance(records, Sequence) else list(records)
        self.processor = processor
        self.cfg = cfg
        self.kind = kind
        self.extra = extra
        self.cache_bytes = int(cache_mib * 2**20)
        self._cache: dict[int, Encoded] = {}
        self._images: dict[tuple[str, ...], dict[str, torch.Tensor]] = {}  # image refs -> shared tensors
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.records)

    def encode(self, index: int) -> Encoded:
        if index not in self._cache:
            enc = encode_record(self.processor, self.records[index], index, self.cfg, self.kind)
            if self.extra is not None:
                EXTRA_BLOCKS[self.extra](self, index, enc)
            self._remember(index, enc)
            if index not in self._cache:  # over the memory budget: encoded on demand every time
                return enc
        # A fresh shell, so callers (and subclasses) that append blocks never touch the cache.
        c = self._cache[index]
        return Encoded(c.row, c.id, c.prompt_ids, list(c.responses), c.image_inputs, list(c.token_flags),
                       dict(c.block_images), c.prompt_loss, c.dropped_turns, c.prompt_text)  # fmt: skip

    def _remember(self, index: int, enc: Encoded) -> None:
        """Cache ``enc`` if the byte budget allows; identical image lists share one tensor dict."""
        if self.cache_bytes <= 0:
            return
        refs = self.records[index].images
        key = tuple(r if isinstance(r, str) else f"<object {id(r)}>" for r in refs)
        shared = self._images.get(key) if all(isinstance(r, str) for r in refs) else None
        if shared is not None and all(torch.equal(shared[k], v) for k, v in enc.image_inputs.items()):
            enc.image_inputs = shared  # same pixels as another cached row: keep one copy
            new_bytes = 0
        else:
            new_bytes = sum(t.numel() * t.element_size() for t in enc.image_inputs.values())
        new_bytes += sum(t.numel() * t.element_size() for b in enc.block_images.values() for t in b.values())
        new_bytes += 8 * (len(enc.prompt_ids) + sum(len(r) for r in enc.responses))
        if self._cached_bytes + new_bytes > self.cache_bytes:
            return
        if shared is None and key and all(isinstance(r, str) for r in refs):
            self._images[key] = enc.image_inputs
        self._cache[index] = enc
        self._cached_bytes += new_bytes

    def batch(self, indices: Sequence[int]) -> Batch:
        return collate([self.encode(i) for i in indices], self.processor)

    def remember(self, index: int, enc: Encoded) -> None:
        """Keep an item encoded elsewhere (a worker) in this dataset's cache, within the byte budget."""
        if index not in self._cache:
            self._remember(index, enc)

    def check_all(self, num_workers: int = 0, progress: bool | None = None) -> None:
        """Encode every record once (in ``num_workers`` processes when > 0, with a progress bar on a
        terminal); raise one error listing every row that cannot be used."""
        n = len(self)
        chunks = [list(range(i, min(i + 16, n))) for i in range(0, n, 16)]
        problems: list[str] = []
        bar = tqdm(total=n, desc="encode rows", unit="row", disable=None if progress is None else not progress)
        with OrderedPool(num_workers, {"dataset": self}) as pool:
            for rows, results in zip(chunks, pool.imap(_encode_rows, chunks)):
                for i, res in zip(rows, results):
                    if isinstance(res, str):
                        problems.append(res)
                    elif num_workers:
                        self.remember(i, res)
                bar.update(len(rows))
        bar.close()
        if problems:
            shown = "\n  ".join(problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise CollateError(f"{len(problems)} of {len(self)} rows cannot be trained on:\n  {shown}{more}")


def _encode_rows(rows: list[int]) -> list[Encoded | str]:
    """Worker task of :meth:`EncodedDataset.check_all`: encoded rows, or the message of a bad one."""
    dataset = worker_state()["dataset"]
    if in_worker():
        dataset.cache_bytes = 0  # this copy's cache would die with the worker: the parent keeps the results
    out: list[Encoded | str] = []
    for i in rows:
        try:
            out.append(dataset.encode(i))
        except (CollateError, FileNotFoundError, OSError) as exc:
            out.append(str(exc))
    return out


def _mismatched_block(ds: EncodedDataset, index: int, enc: Encoded) -> None:
    """KTO's KL reference point needs each prompt with ANOTHER example's answer: row i gets the first
    response of row (i + 1) mod n — a fixed pairing, so reference log-probs of it can be cached."""
    other = ds.records[(index + 1) % len(ds.records)]
    text = RESPONSE_FIELDS[ds.kind](other, (index + 1) % len(ds.records))[0][0]
    ids, _ = encode_response(ds.processor, text)
    ids = fit_response(len(enc.prompt_ids), ids, ds.cfg.max_length, index, enc.id)
    enc.responses.append(ids)
    enc.token_flags.append([False] * len(ids))


def corrupt_image(img: Any, row: int, keep: float = 0.2, seed: int = 0) -> Any:
    """mDPO's corrupted image: a random crop keeping ``keep`` of the area, resized back to full size
    (so the processor yields the same number of image tokens). Deterministic in (seed, row)."""
    import random

    rng = random.Random(seed * 1_000_003 + row)
    w, h = img.size
    cw, ch = max(1, int(w * keep**0.5)), max(1, int(h * keep**0.5))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return img.crop((x, y, x + cw, y + ch)).resize((w, h))


def _corrupted_block(ds: EncodedDataset, index: int, enc: Encoded) -> None:
    """mDPO: the chosen answer again, seen with a corrupted image (own pixel tensors for that block)."""
    from vlalign.models import chat

    rec = ds.records[index]
    images = [corrupt_image(img, index) for img in open_images(ds.processor, rec, ds.cfg)]
    if not images:
        raise CollateError(f"row {index} (id {rec.id!r}): mDPO needs an image to corrupt; this row has none")
    text = enc.prompt_text or chat.render(ds.processor, record_messages(rec), add_generation_prompt=True)
    ids, image_inputs = processor_ids(ds.processor, text, images)
    if ids != enc.prompt_ids:
        raise CollateError(f"row {index}: the corrupted image changed the number of image tokens")
    enc.responses.append(list(enc.responses[0]))
    enc.token_flags.append([False] * len(enc.responses[0]))
    enc.block_images[len(enc.responses) - 1] = image_inputs


# name -> fn(dataset, row, encoded) appending one more response block to each record
EXTRA_BLOCKS = {"mismatched": _mismatched_block, "corrupted": _corrupted_block}


def default_base_dir(path: str | Path) -> str:
    """The folder relative image paths of a data file resolve against."""
    p = Path(path)
    return str(p if p.is_dir() else p.parent)
