"""Where a history comes from: the Olist files, or any transaction log through a column mapping.

Every source yields the same :class:`~replay.history.History` (the same event schemas), so
everything downstream (replay, profiles, retrain, backtests) works unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports SOURCES at start-up: no pandas here
    from replay.history import History

__all__ = ["SOURCES", "campaigns_beside", "check_history", "load_source", "source_files"]

SOURCES = ("olist", "transactions", "online-retail")


def load_source(source: str, data: Path, mapping: Path | None = None, campaigns: Path | None = None) -> History:
    """Load ``data`` as ``source`` (``transactions`` needs a ``mapping`` TOML file), with the campaign
    log ``campaigns`` if given (its columns from the mapping's ``[campaigns]`` table, else the
    defaults); Olist data is read with the ``campaigns.csv`` beside its files, if there is one."""
    from replay.campaigns import add_campaigns, load_campaign_mapping
    from replay.history import LoaderError

    if source == "olist":
        from replay.olist import load_olist

        history = load_olist(data)
    elif source == "online-retail":
        from replay.transactions import load_online_retail

        history = load_online_retail(data)
    elif source == "transactions":
        from replay.transactions import load_mapping, load_transactions

        if mapping is None:
            raise LoaderError("--source transactions needs --mapping FILE (see docs/mapping.toml)")
        history = load_transactions(data, load_mapping(mapping))
    else:
        raise LoaderError(f"unknown source {source!r}; one of {', '.join(SOURCES)}")
    campaigns = campaigns or campaigns_beside(source, data)
    if campaigns is not None:
        add_campaigns(history, campaigns, load_campaign_mapping(mapping) if mapping else None)
    return history


def campaigns_beside(source: str, data: Path) -> Path | None:
    """The campaigns.csv beside Olist files, if there is one."""
    from replay.campaigns import CAMPAIGN_FILE

    found = data / CAMPAIGN_FILE
    return found if source == "olist" and data.is_dir() and found.is_file() else None


def check_history(history: History, data: Path, max_reject_share: float) -> None:
    """Refuse a load that gave nothing, or whose rejects say the input is wrong (a
    :class:`~replay.history.LoaderError` naming what): never a silent success on nothing."""
    from replay.history import LoaderError

    history.report.check(max_reject_share)
    if sum(history.event_counts().values()) == 0:
        read = ", ".join(f"{rows:,} rows of {name}" for name, rows in history.report.rows_read.items()) or "no rows"
        reasons = ", ".join(f"{reason} {count:,}" for (_, reason), count in history.report.counts().items())
        raise LoaderError(f"{data} gives no events ({read}{'; rejected: ' + reasons if reasons else ''})")


def source_files(source: str, data: Path, campaigns: Path | None = None) -> list[Path]:
    """The files a load of ``data`` reads (they fingerprint a replay)."""
    extra = [found] if (found := campaigns or campaigns_beside(source, data)) else []
    if data.is_file():
        return [data, *extra]
    from replay.olist import OLIST_FILES

    return [data / name for name in OLIST_FILES.values() if (data / name).exists()] + extra
