"""``data:`` — where the training rows come from, how they are read and checked, and how they become tensors.

One section for every command that reads data (the trainers re-export it as
``vlalign.trainers.configs.DataConfig``). Pass the whole section to
:func:`vlalign.data.validate.load_records` (``load_records(cfg.data)``) and every option below applies.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from vlalign.config import BaseConfig
from vlalign.data.images import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_IMAGE_SIDE


class DataConfig(BaseConfig):
    """Where the training rows come from and how they become tensors."""

    train: str = Field(..., description="data file, folder, glob, save_to_disk folder, Hub-layout folder or Hub id "
                                        "(org/name); canonical JSONL or any format `data.format` names")
    format: str | None = Field(None, description="format adapter name; None = detect from the fields (the choice "
                                                 "and the reason are logged)")
    format_options: dict[str, Any] = Field(default_factory=dict, description="adapter options, e.g. {min_gap: 1.5}")
    on_bad_rows: Literal["error", "skip"] = Field(
        "error", description="`skip` drops rows that fail validation (they are counted and listed)"
    )
    bad_rows_report: str | None = Field(None, description="write the full list of bad and skipped rows here (JSON)")
    limit: int | None = Field(None, ge=1, description="use only the first N rows (smoke tests)")
    max_length: int = Field(512, ge=8, description="prompt + image tokens + response; whole earlier turns are "
                                                   "dropped first, then responses are cut; image tokens never")

    split: str | None = Field(None, description="split of a Hub dataset / Hub-layout folder / DatasetDict "
                                                "(None = train, or the only split)")
    subset: str | None = Field(None, description="config name of a Hub dataset (`name=` in datasets.load_dataset)")
    revision: str | None = Field(None, description="Hub revision: branch, tag or commit (pin it for reproducible runs)")
    streaming: bool = Field(False, description="read rows as a stream (IterableDataset): memory does not grow with "
                                               "the dataset; needs max_steps")
    shuffle_buffer: int = Field(1000, ge=1, description="streaming: rows held in the shuffle buffer")
    num_proc: int | None = Field(None, ge=1, description="processes for the validation map (None = one)")
    num_workers: int = Field(0, ge=0, description="worker processes that tokenize and preprocess images while the "
                                                  "model trains (0 = in the training process)")
    cache_dir: str | None = Field(None, description="datasets cache folder (None = HF_DATASETS_CACHE)")
    image_root: str | None = Field(None, description="folder relative image paths resolve against (default: the "
                                                     "data file's folder, or a Hub dataset's folder)")
    allow_network: bool = Field(False, description="download images given as http(s) URLs (off: such rows are bad)")
    max_image_pixels: int = Field(DEFAULT_MAX_IMAGE_PIXELS, ge=1, description="larger images are bad rows "
                                                                              "(decompression-bomb guard)")
    max_image_side: int = Field(DEFAULT_MAX_IMAGE_SIDE, ge=1, description="images with a longer side are bad rows")
    assistant_turns: Literal["last", "all"] = Field(
        "last", description="SFT on conversations: train on the final assistant turn, or on every assistant turn"
    )
