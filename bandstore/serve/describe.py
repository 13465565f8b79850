"""What a store holds, for people (``bandstore info``): tables, the applied plan, the
calibration, how each table's layout was made, where its access counts came from, and the
bytes it takes on disk."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from bandstore.serve.plan import META_KEY as PLAN_KEY
from bandstore.serve.runtime import CALIBRATION_KEY


def disk_bytes(root: str | os.PathLike) -> int:
    """Bytes the files under ``root`` take on disk (allocated blocks; hard links once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for folder, _, files in os.walk(os.fspath(root)):
        for f in files:
            try:
                st = os.lstat(os.path.join(folder, f))
            except FileNotFoundError:  # removed meanwhile (gc)
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def _layout_of(trec: dict, tuning: dict | None) -> str:
    written = str(trec.get("written_by", ""))
    if not written or written.startswith("add_table"):
        return "identity" if written else "unknown (written before this was recorded)"
    source = (tuning or {}).get("source")
    return str(source) if source else written


def describe_store(path: str | os.PathLike) -> dict[str, Any]:
    """The facts ``bandstore info`` prints (JSON-ready)."""
    from bandstore.serve.store import open as open_store

    with open_store(path, cache_bytes=0, plan=False) as store:
        cat = store.catalog
        rec = cat.current_version()
        tables = {}
        for name, info in store.tables.items():
            trec = rec["tables"][name]
            tuning = cat.tuning(name)
            origin = store.counts_origin(name)
            has = store.has_counts(name)
            tables[name] = {
                **info.as_dict(),
                "layout": _layout_of(trec, tuning),
                # Whose access counts admission and pinning use (None: none recorded).
                "counts": None
                if not has
                else {
                    "recorded": True,
                    "origin": origin.as_dict() if origin else None,
                    "described": origin.describe() if origin else "of unknown origin",
                },
                "tuning": tuning,
            }
        plan = cat.meta(PLAN_KEY) or None
        cal = cat.meta(CALIBRATION_KEY) or None
        return {
            "store": str(Path(path)),
            "version": store.version,
            "versions_kept": len(cat.version_ids()),
            "block_size": store.block_size,
            "checksum_bytes": store.checksum_bytes,
            "tables": tables,
            "plan": plan,
            "calibration": None
            if cal is None
            else {k: cal.get(k) for k in ("measured_at", "cpus", "seconds", "format")},
            "disk_bytes": disk_bytes(path),
            "updates": store.updates_info(),
        }


def _when(t: Any) -> str:
    if not isinstance(t, int | float):
        return "at an unknown time"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _mib(n: float) -> str:
    """Bytes for people: KiB below a MiB, MiB below a GiB, else GiB."""
    for unit, shift in (("GiB", 30), ("MiB", 20)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n / 1024:.1f} KiB"


def format_description(d: dict[str, Any]) -> str:
    """``describe_store``'s facts as text."""
    lines = [
        f"{d['store']}: version {d['version']} ({d['versions_kept']} kept), block size "
        f"{d['block_size']}, checksum per {d['checksum_bytes']} bytes, "
        f"{_mib(d['disk_bytes'])} on disk"
    ]
    lines.append(f"tables ({len(d['tables'])}):")
    for n, t in d["tables"].items():
        lines.append(
            f"  {n}: {t['rows']:,} rows x {t['dim']} {t['codec']}, {t['blocks']:,} blocks of "
            f"{t['rows_per_block']} rows ({_mib(t['blocks'] * t['block_size'])})"
        )
        lines.append(f"    layout: {t['layout']}")
        c = t["counts"]
        lines.append(
            "    access counts: none (admission never takes neighbours)"
            if c is None
            else f"    access counts: {c['described']}"
        )
        tun = t["tuning"]
        if tun and "cache_bytes" in tun:
            thr = tun.get("threshold", "never")
            by = tun.get("sized_by") or tun.get("source") or "set_tuning"
            lines.append(
                f"    cache (stored): {_mib(tun['cache_bytes'])}, threshold {thr}, pinned share "
                f"{float(tun.get('pinned_share', 0.0)):.2f} (by {by})"
            )
    plan = d["plan"]
    if plan:
        strat: dict[str, int] = {}
        for tp in plan.get("tables", {}).values():
            k = tp.get("strategy", "?")
            k = f"split/{tp.get('inner')}" if k == "split" else k
            strat[k] = strat.get(k, 0) + 1
        kinds = ", ".join(f"{v} {k}" for k, v in sorted(strat.items()))
        lines.append(
            f"plan: {plan.get('name', 'plan')}, {plan.get('workers')} worker(s), {kinds}; it "
            "sets the caches of the tables it names (over the stored sizes)"
        )
    else:
        lines.append("plan: none (every table cached)")
    cal = d["calibration"]
    if cal:
        lines.append(
            f"calibration: measured {_when(cal.get('measured_at'))} on {cal.get('cpus')} CPU(s)"
        )
    else:
        lines.append("calibration: none (the planner uses typical costs: `bandstore calibrate`)")
    u = d.get("updates")
    if u:
        lines.append(
            f"update log: {u['records']} records, {u['rows']} rows, {_mib(u['bytes'])} "
            f"(last update {u['update_seq']}) in {u.get('segments', 0)} files of "
            f"{_mib(u.get('file_bytes', 0))}; overlay {_mib(u.get('overlay_bytes', 0))}"
        )
    return "\n".join(lines)
