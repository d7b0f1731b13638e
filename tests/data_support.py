"""Data helpers the tests import: PNG bytes, Hub-layout dataset folders, a fake Hub cache.

A module of its own, not the conftest: the suite has two conftest.py files, and ``from conftest import``
resolves to whichever pytest loaded last.
"""

from __future__ import annotations


def png_bytes(color=(255, 0, 0), size=(16, 16)) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def write_hub_layout(folder, splits: dict, features=None, shards: int = 2, config: str = "default"):
    """A dataset folder as a Hub repo looks on disk: ``data/<split>-0000k-of-0000n.parquet`` shards and a
    ``README.md`` card whose YAML lists the config's data files (and the features, as the Hub writes them).
    ``splits`` maps split name -> list of row dicts; ``features`` (a datasets.Features) types the columns
    (e.g. an ``image`` column as ``datasets.Image()``)."""
    from pathlib import Path

    import datasets
    import yaml

    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    card_splits = []
    for split, rows in splits.items():
        ds = datasets.Dataset.from_list(rows, features=features)
        n = max(1, min(shards, len(rows)))
        for k in range(n):
            ds.shard(n, k, contiguous=True).to_parquet(str(folder / "data" / f"{split}-{k:05d}-of-{n:05d}.parquet"))
        card_splits.append({"split": split, "path": f"data/{split}-*"})
    meta = {"configs": [{"config_name": config, "data_files": card_splits}]}
    if features is not None:
        meta["dataset_info"] = {"config_name": config, "features": features._to_yaml_list()}
    (folder / "README.md").write_text("---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n# A test dataset\n")
    return folder


def fake_hub_cache(cache_root, repo_id: str, folder, commit: str = "0" * 40):
    """Put ``folder`` into a Hugging Face Hub cache as the snapshot of dataset ``repo_id`` at ``main``,
    exactly where ``huggingface_hub.snapshot_download`` looks for it offline."""
    import shutil
    from pathlib import Path

    repo = Path(cache_root) / f"datasets--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return repo
