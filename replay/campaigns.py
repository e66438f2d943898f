"""Campaign logs: who was sent which campaign, and who was held out as its control.

A campaign log has one row per (campaign, customer): the customer, the campaign id, when it was
sent (for a control customer: when it would have been), whether the customer was in the
treatment group or the randomly held-out control group, and optionally the offer. A
:class:`CampaignMapping` names the columns, from the ``[campaigns]`` table of a mapping TOML file
(docs/mapping.toml); its defaults are the layout ``segstream synth --campaigns`` writes
(``campaigns.csv``). Each row becomes one :class:`~segstream.schemas.CampaignSent` with the
deterministic id ``<source>:campaign:<campaign>:<customer>``, replayed onto its own topic in
event-time order with the orders and reviews.

Rows that become no event are counted by reason in the load report: no customer, no campaign, a
bad time, a group that is neither the treatment's nor the control's value, and a customer named
twice in one campaign (the earliest send is kept: a customer is in a campaign once).

>>> CampaignMapping().columns()
['customer_unique_id', 'campaign_id', 'sent_at', 'group']
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError

from replay.history import History, LoaderError, LoadReport, empty_frame

__all__ = ["CAMPAIGN_FILE", "CampaignMapping", "add_campaigns", "load_campaign_mapping", "load_campaigns"]

CAMPAIGN_FILE = "campaigns.csv"  # beside the Olist files, read with the default mapping when present


class CampaignMapping(BaseModel):
    """Which column of a campaign log is what (names as in the file's header)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    customer: str = "customer_unique_id"
    campaign: str = "campaign_id"
    time: str = "sent_at"
    time_format: str | None = None  # strftime format; None: let pandas parse ISO-like dates
    group: str = "group"
    treatment: str = "treatment"  # the group column's value for customers who were sent the message
    control: str = "control"  # ... and for those held out
    offer: str | None = "offer"  # optional: when not set, read if the file has the column
    delimiter: str = ","
    source: str = "campaigns"  # the prefix of event ids

    def columns(self) -> list[str]:
        """The columns a log must have (the offer's only when the mapping names it)."""
        named = [self.customer, self.campaign, self.time, self.group]
        return named + ([self.offer] if self.offer is not None and "offer" in self.model_fields_set else [])


def load_campaign_mapping(path: str | Path) -> CampaignMapping:
    """The ``[campaigns]`` table of a mapping TOML file (the defaults where it has none)."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
        return CampaignMapping(**data.get("campaigns", {}))
    except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
        raise LoaderError(f"campaign mapping {path}: {exc}") from None


def load_campaigns(path: str | Path, mapping: CampaignMapping, report: LoadReport) -> pd.DataFrame:
    """The campaign log at ``path`` as a ``campaigns`` frame (see :class:`~replay.history.History`);
    rows read and rejects are counted in ``report``."""
    path = Path(path)
    if not path.is_file():
        raise LoaderError(f"no campaign log at {path}")
    sep = r"\s+" if mapping.delimiter == "whitespace" else mapping.delimiter
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep, encoding="utf-8", encoding_errors="replace")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise LoaderError(f"{path.name}: not a readable CSV campaign log: {exc}") from None
    raw.columns = [str(column).strip() for column in raw.columns]
    file = path.name
    missing = [c for c in mapping.columns() if c not in raw.columns]
    if missing:
        raise LoaderError(f"{file}: no column {', '.join(map(repr, missing))} (columns: {', '.join(raw.columns)})")
    report.rows_read[file] += len(raw)
    group = raw[mapping.group].str.strip()
    frame = pd.DataFrame(
        {
            "row": range(len(raw)),
            "campaign_id": raw[mapping.campaign].str.strip(),
            "customer_unique_id": raw[mapping.customer].str.strip(),
            "event_time": pd.to_datetime(raw[mapping.time].str.strip(), format=mapping.time_format, errors="coerce"),
            "offer": raw[mapping.offer].str.strip() if mapping.offer in raw.columns else "",
            "group": group.map({mapping.treatment: "treatment", mapping.control: "control"}),
        }
    )
    report.culprits[(file, "bad time")] = f"column {mapping.time!r} with format {mapping.time_format or 'ISO'!r}"
    keep = pd.Series(True, index=frame.index)
    checks = [
        (frame["customer_unique_id"] == "", "no customer id"),
        (frame["campaign_id"] == "", "no campaign id"),
        (frame["event_time"].isna(), "bad time"),
        (frame["group"].isna(), f"group neither {mapping.treatment!r} nor {mapping.control!r}"),
    ]
    for bad, reason in checks:
        bad = bad & keep
        if bad.any():
            values = raw.loc[bad, mapping.time] if reason == "bad time" else group[bad]
            report.add(file, frame.loc[bad, "row"], reason, values=values)
        keep &= ~bad
    kept = frame[keep].sort_values(["event_time", "row"], kind="mergesort")
    repeated = kept.duplicated(["campaign_id", "customer_unique_id"])  # after the earliest
    if repeated.any():
        report.add(file, kept.loc[repeated, "row"], "customer named again in the campaign (the earliest send kept)")
    if not (~repeated).any():
        return empty_frame("campaigns")
    kept = kept[~repeated].drop(columns="row")
    return kept.sort_values(["event_time", "campaign_id", "customer_unique_id"]).reset_index(drop=True)


def add_campaigns(history: History, path: str | Path, mapping: CampaignMapping | None = None) -> History:
    """``history`` with the sends of the campaign log at ``path`` (its rows counted in its report)."""
    mapping = mapping or CampaignMapping()
    history.campaigns = load_campaigns(path, mapping, history.report)
    history.campaign_source = mapping.source
    return history
