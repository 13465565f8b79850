"""Garbage collection of a store's versions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bandstore.storage import blockfile, updates
from bandstore.storage.catalog import Catalog


def collect_garbage(path: str | os.PathLike) -> dict[str, Any]:
    """Remove versions that are neither current nor held by a reader (and orphan directories).

    Returns ``{"removed": [...], "kept": [...]}`` version ids and ``pruned_update_records``
    (update log records every kept version has folded in, deleted). Safe while readers and writers
    run: a version is removed only under an exclusive lock on it, which no reader holds, and
    its catalog record goes first so no new reader can pick it.
    """
    root = Path(path)
    catalog = Catalog.open(root)
    try:
        with blockfile.write_lock(root):
            current = catalog.current_version()["id"]
            committed = set(catalog.version_ids())
            dirs = blockfile.list_version_dirs(root)
            # First take every version we can; then free only files no kept version uses.
            removable: dict[int, int | None] = {}
            kept = [current]
            for vid in sorted((committed | set(dirs)) - {current}):
                vdir = dirs.get(vid)
                fd = blockfile.try_lock_exclusive(vdir) if vdir is not None else -1
                if fd is None:
                    kept.append(vid)  # a reader serves from it
                else:
                    removable[vid] = fd
            live_files = {
                t["file_id"]
                for vid in kept
                for t in (catalog.version(vid) or {"tables": {}})["tables"].values()
            }
            dead_files = {
                t["file_id"]
                for vid in removable
                for t in (catalog.version(vid) or {"tables": {}})["tables"].values()
            } - live_files
            catalog.drop_versions(sorted(set(removable) & committed), sorted(dead_files))
            for vid, fd in removable.items():
                if vid in dirs:
                    blockfile.remove_version_dir(dirs[vid], fd)
            # Row updates every remaining version has folded in are nobody's any more.
            pruned = updates.prune_folded(catalog)
    finally:
        catalog.close()
    return {"removed": sorted(removable), "kept": sorted(kept), "pruned_update_records": pruned}
