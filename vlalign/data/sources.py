"""Where rows come from: one resolver from "what the user named" to a 🤗 ``datasets`` dataset of raw rows.

Accepted sources (:func:`open_source`), in the order they are recognised:
- an in-memory ``datasets.Dataset`` / ``IterableDataset`` / ``DatasetDict`` from the Python API;
- a ``Dataset.save_to_disk`` folder (``dataset_info.json`` + ``state.json``, or ``dataset_dict.json``),
  loaded with ``load_from_disk`` — never mistaken for a folder of data files;
- a folder in the Hub's own layout (a ``README.md`` card whose YAML has ``configs:``/``dataset_info:``,
  data files under ``data/`` ...), or any folder when ``split`` is given: loaded with
  ``datasets.load_dataset(folder, name=subset, split=split)``, exactly as the Hub would serve it;
- local JSON / JSONL / Parquet files, folders of them (recursive) and globs;
- a Hub id ``org/name`` (with ``split``, ``subset``/config and ``revision``): its snapshot (only the
  README and the chosen config's data files) is fetched with ``huggingface_hub.snapshot_download`` into
  the Hub cache and then loaded as the folder above — so "by id" and "by path" are one code path. In
  streaming mode the files are read straight from ``hf://`` without downloading.

Every row keeps where it came from: JSON rows and streamed rows carry ``__file__``/``__row__`` columns;
Parquet loaded by ``datasets`` is located through each shard's row count (:class:`Locator`).
"""

from __future__ import annotations

import bisect
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq
import yaml
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCardData, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

from vlalign.data.io import data_files, is_glob
from vlalign.data.rows import JSON_SUFFIXES, provenance_rows, suffix_of, undecoded

# The raw-row schema of JSON sources: every row is its JSON text plus where it came from.
JSON_TEXT_FEATURES = datasets.Features({
    "__file__": datasets.Value("string"), "__row__": datasets.Value("int64"),
    "__error__": datasets.Value("string"), "__raw__": datasets.Value("string"),
})
PROVENANCE = ("__file__", "__row__", "__error__", "__raw__")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CARD_KEYS = ("configs", "dataset_info")


@dataclass
class SourceSpec:
    """What to load. ``path`` is a path, glob, Hub id, or a ``datasets`` object."""

    path: Any
    split: str | None = None
    subset: str | None = None
    revision: str | None = None
    streaming: bool = False
    cache_dir: str | None = None
    image_root: str | None = None

    @property
    def label(self) -> str:
        return describe(self.path)


@dataclass
class Locator:
    """Row index of a concatenated dataset → (file, row within that file)."""

    label: str
    files: list[str] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)  # first global index of each file

    def locate(self, index: int) -> tuple[str, int]:
        if not self.files:
            return self.label, index
        k = bisect.bisect_right(self.starts, index) - 1
        return self.files[k], index - self.starts[k]


@dataclass
class RawSource:
    """Raw rows of one source, before any adapter ran."""

    dataset: Any  # datasets.Dataset (map-style) or datasets.IterableDataset (streaming)
    label: str
    json_text: bool  # rows are __file__/__row__/__error__/__raw__ (JSON text)
    provenance: bool  # rows carry __file__/__row__ (else: Locator on the row index)
    locator: Locator
    image_root: str | None = None
    files: list[str] = field(default_factory=list)


def describe(path: Any) -> str:
    if isinstance(path, (str, os.PathLike)):
        return str(path)
    name = getattr(getattr(path, "info", None), "dataset_name", None)
    return f"<in-memory {type(path).__name__}{' ' + name if name else ''}>"


# ---------------------------------------------------------------------------------------- recognising


def is_saved_dataset(folder: Path) -> bool:
    """A ``save_to_disk`` folder (Dataset or DatasetDict)."""
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


def card_metadata(folder: Path) -> dict[str, Any]:
    """The YAML front matter of ``folder/README.md`` ({} when there is none)."""
    readme = folder / "README.md"
    if not readme.is_file():
        return {}
    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) if text.count("---") >= 2 else None
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def is_hub_layout(folder: Path) -> bool:
    return any(k in card_metadata(folder) for k in _CARD_KEYS)


def looks_like_hub_id(text: str) -> bool:
    return bool(_HUB_ID.match(text)) and suffix_of(text) not in (".json", ".jsonl", ".parquet")


# ---------------------------------------------------------------------------------------- code version


@lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of the data-layer source: part of every cache key, so changed adapters never reuse old caches."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted([*root.glob("*.py"), *(root / "formats").glob("*.py")]):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def files_signature(files: Sequence[str]) -> str:
    """Hash of (path, size, mtime) of local files (URLs as they are) + the code version: a changed file or
    a changed reader gives a new cache key. A string, not a list: ``datasets`` shards list arguments."""
    h = hashlib.sha256(code_version().encode())
    for f in files:
        try:
            st = os.stat(f)
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{f}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------- opening


def _split_of(dd: Any, split: str | None, label: str) -> tuple[str, Any]:
    """(name, split) of a DatasetDict: the one asked for, else ``train``, else the only one."""
    names = list(dd.keys())
    if split is None:
        split = "train" if "train" in names else (names[0] if len(names) == 1 else None)
        if split is None:
            raise ValueError(f"{label}: holds several splits ({', '.join(names)}); choose one with data.split / --split")
    if split not in names:
        raise ValueError(f"{label}: no split {split!r}; it has {', '.join(names)}")
    return split, dd[split]


def _iterate(source: Any) -> Any:
    """Rows of an IterableDataset, images undecoded (the generator ``Dataset.from_generator`` reads)."""
    yield from undecoded(source)


def _json_source(files: list[str], label: str, spec: SourceSpec, image_root: str | None) -> RawSource:
    kwargs = {"shards": files, "as_text": not spec.streaming, "signature": files_signature(files)}
    if spec.streaming:
        ds = datasets.IterableDataset.from_generator(provenance_rows, gen_kwargs=kwargs)
    else:
        ds = datasets.Dataset.from_generator(provenance_rows, gen_kwargs=kwargs, features=JSON_TEXT_FEATURES,
                                             cache_dir=spec.cache_dir)
    return RawSource(ds, label, json_text=not spec.streaming, provenance=True, locator=Locator(label),
                     image_root=image_root, files=files)


def _parquet_locator(files: list[str], label: str) -> Locator:
    starts, n = [], 0
    for f in files:
        starts.append(n)
        n += pq.read_metadata(f).num_rows
    return Locator(label, list(files), starts)


def _files_source(files: list[str], label: str, spec: SourceSpec, image_root: str | None,
                  load: Any = None) -> RawSource:
    """Data files (local or hf://). Parquet, map-style: ``load()`` (``datasets``' own reader) or the
    parquet builder; everything else (and all streaming): our provenance reader."""
    kinds = {suffix_of(f) for f in files}
    if spec.streaming:
        ds = datasets.IterableDataset.from_generator(
            provenance_rows, gen_kwargs={"shards": files, "as_text": False, "signature": files_signature(files)})
        return RawSource(ds, label, json_text=False, provenance=True, locator=Locator(label),
                         image_root=image_root, files=files)
    if kinds <= set(JSON_SUFFIXES):
        return _json_source(files, label, spec, image_root)
    if kinds != {".parquet"}:
        raise ValueError(f"{label}: mixes Parquet and JSON files; load them separately (or convert one side)")
    check_parquet_schemas(files)
    ds = load() if load else datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=spec.cache_dir)
    return RawSource(ds, label, json_text=False, provenance=False, locator=_parquet_locator(files, label),
                     image_root=image_root, files=files)


class FileProblem(ValueError):
    """A problem of a whole file (unreadable Parquet, a schema that differs from its siblings)."""

    def __init__(self, file: str, reason: str, fix: str = "") -> None:
        super().__init__(f"{file}: {reason}" + (f" (fix: {fix})" if fix else ""))
        self.file, self.reason, self.fix = file, reason, fix


def check_parquet_schemas(files: list[str]) -> None:
    """Every shard must be readable and share the first shard's columns and types (datasets would
    otherwise fail mid-build with a cast error that names no file)."""
    first = None
    for f in files:
        try:
            schema = pq.read_schema(f)
        except Exception as exc:  # noqa: BLE001 (any unreadable file is named)
            raise FileProblem(f, f"not a readable Parquet file ({type(exc).__name__}: {exc})",
                              "re-download or re-export the file") from None
        if first is None:
            first = (f, schema)
            continue
        ref = first[1]
        a, b = {n: str(ref.field(n).type) for n in ref.names}, {n: str(schema.field(n).type) for n in schema.names}
        if a != b:
            diff = sorted(set(a.items()) ^ set(b.items()))[:4]
            raise FileProblem(f, f"its columns differ from {first[0]}'s: {diff}",
                              "give every shard the same columns and types, or load the files separately")


def _hub_layout(folder: Path, label: str, spec: SourceSpec) -> RawSource:
    builder = datasets.load_dataset_builder(str(folder), name=spec.subset, cache_dir=spec.cache_dir)
    splits = builder.config.data_files or {}
    split = spec.split or ("train" if "train" in splits else (next(iter(splits)) if len(splits) == 1 else None))
    if split is None or split not in splits:
        raise ValueError(f"{label}: {'no split ' + repr(spec.split) + '; ' if spec.split else ''}"
                         f"splits are {', '.join(splits) or '(none)'}; choose one with data.split / --split")
    files = [str(f) for f in splits[split]]
    split_label = f"{label}[{split}]"
    root = spec.image_root or str(folder)

    def load() -> Any:
        return datasets.load_dataset(str(folder), name=spec.subset, split=split, cache_dir=spec.cache_dir)

    return _files_source(files, split_label, spec, root, load)


def _hub_patterns(card_dir: Path, subset: str | None, split: str | None) -> list[str] | None:
    """The files a snapshot needs for one config (and split): README + its ``data_files`` patterns."""
    configs = MetadataConfigs.from_dataset_card_data(DatasetCardData(**card_metadata(card_dir)))
    if not configs:
        return None
    name = subset or configs.get_default_config_name()
    if name not in configs:
        raise ValueError(f"no config {name!r}; the card lists {', '.join(configs)} (data.subset / --subset)")
    entries = configs[name].get("data_files") or []
    entries = [entries] if isinstance(entries, str) else entries
    patterns = []
    for item in entries:
        if isinstance(item, dict):
            if split is None or item.get("split") == split:
                paths = item["path"]
                patterns += [paths] if isinstance(paths, str) else list(paths)
        else:
            patterns.append(item)
    return ["README.md", *patterns] if patterns else None


def hub_snapshot(repo_id: str, revision: str | None, subset: str | None, split: str | None) -> Path:
    """Download (or find in the Hub cache) the files one config/split of a Hub dataset needs."""
    card = Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, allow_patterns=["README.md"]))
    patterns = _hub_patterns(card, subset, split)
    return Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, allow_patterns=patterns))


def _hub_stream(repo_id: str, spec: SourceSpec) -> RawSource:
    builder = datasets.load_dataset_builder(repo_id, name=spec.subset, revision=spec.revision)
    splits = builder.config.data_files or {}
    split = spec.split or "train"
    if split not in splits:
        raise ValueError(f"{repo_id}: no split {split!r}; it has {', '.join(splits)}")
    return _files_source([str(f) for f in splits[split]], f"{repo_id}[{split}]", spec, spec.image_root)


def _dataset_source(ds: Any, label: str, spec: SourceSpec) -> RawSource:
    """An in-memory / saved ``datasets`` object (rows named by their index)."""
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        split, ds = _split_of(ds, spec.split, label)
        label = f"{label}[{split}]"
    if isinstance(ds, datasets.IterableDataset) and not spec.streaming:  # map-style: read it once, to Arrow
        ds = datasets.Dataset.from_generator(_iterate, gen_kwargs={"source": ds}, cache_dir=spec.cache_dir)
    if isinstance(ds, datasets.IterableDataset):
        ds = undecoded(ds).map(lambda row, i: {"__file__": label, "__row__": i}, with_indices=True)
        return RawSource(ds, label, json_text=False, provenance=True, locator=Locator(label), image_root=spec.image_root)
    if spec.streaming:
        ds = ds.add_column("__row__", list(range(len(ds)))).add_column("__file__", [label] * len(ds))
        return RawSource(ds.to_iterable_dataset(num_shards=min(len(ds), 64) or 1), label, json_text=False,
                         provenance=True, locator=Locator(label), image_root=spec.image_root)
    return RawSource(ds, label, json_text=False, provenance=False, locator=Locator(label), image_root=spec.image_root)


def open_source(spec: SourceSpec) -> RawSource:
    """Resolve ``spec.path`` to raw rows (see the module docstring for the order of recognition)."""
    path = spec.path
    label = spec.label
    if isinstance(path, (datasets.Dataset, datasets.IterableDataset, datasets.DatasetDict,
                         datasets.IterableDatasetDict)):
        return _dataset_source(path, label, spec)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"data source must be a path, a Hub id or a datasets object, got {type(path).__name__}")
    text = str(path)
    p = Path(text).expanduser()
    if p.is_dir() and is_saved_dataset(p):
        return _dataset_source(datasets.load_from_disk(str(p)), label, spec)
    if p.is_dir() and (is_hub_layout(p) or spec.split is not None):
        return _hub_layout(p, label, spec)
    if p.exists() or is_glob(text):
        files = [str(f) for f in data_files(text)]
        return _files_source(files, label, spec, spec.image_root)
    if looks_like_hub_id(text):
        try:
            if spec.streaming:
                return _hub_stream(text, spec)
            folder = hub_snapshot(text, spec.revision, spec.subset, spec.split)
        except (LocalEntryNotFoundError, RepositoryNotFoundError, HfHubHTTPError) as exc:
            raise FileNotFoundError(f"{text}: no such file or folder, and no Hub dataset of that name could be "
                                    f"loaded ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
        return _hub_layout(folder, text, spec)
    raise FileNotFoundError(f"{text}: no such file or folder (a Hub dataset is named org/name)")
