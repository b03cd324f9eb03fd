"""Metering as people read it: what it made of usage sent, of a resubmitted
event and of registry changes; conversion tables and rejected usage."""

from __future__ import annotations

from typing import Any, Final

from tokenhub.services.metering.queries import (ConversionTableRow, Outcome, Refused, RejectedPage, Rejection, RejectedStats,
                                                 Verdict)
from tokenhub.services.metering.tools import EmitReport
from tokenhub.views.text import local, rows_table, table

NOT_WAITING_FOR_REGISTRY: Final = ("not waiting for metering's answer (--wait 0): `tokenhub bu list`, `model list`, "
                                   "`funding list` and `conversion show` show what it applied")
REJECTED_COLUMNS: Final = ["rejected_id", "reason_code", "usage_source", "usage_id", "message", "resubmitted_at"]


def emit_text(report: EmitReport) -> str:
    head = f"sent {report.sent} usage events to usage.reported"
    if report.accepted is None:
        return f"{head}; not waiting for metering's answer (--wait 0): `tokenhub rejected list` shows what it refused"
    by_reason = ", ".join(f"{reason} {count}" for reason, count in (report.rejected_by_reason or {}).items())
    text = (f"{head}; metering accepted {report.accepted}, found {report.duplicates} duplicates, "
            f"rejected {report.rejected}" + (f" ({by_reason})" if by_reason else ""))
    if report.unanswered:
        text += (f"; {report.unanswered} not answered within {report.waited_s:g} s "
                 "(is metering running? `tokenhub status`)")
    return text


def resubmitted(verdict: Verdict, wait_s: float) -> str:
    """What metering made of a resubmitted event."""
    if wait_s <= 0:
        return "not waiting for metering's answer (--wait 0)"
    if verdict is None:
        return f"metering has not answered within {wait_s:g} s (is metering running? `tokenhub status`)"
    if isinstance(verdict, Rejection):
        return f"rejected again: {verdict.reason_code}: {verdict.message}"
    if verdict == "duplicate":
        return "a duplicate: metering had already accepted this event, so it counts once"
    return "accepted: metered and on its way to pricing"


def conversion_tables(rows: list[ConversionTableRow], zone: str) -> str:
    return "\n".join(f"version {row['version']} effective {local(row['effective_from'], zone)} ({row['actor']}: {row['reason']})\n"
                     + table(["unit", "class", "Tokens per unit"],
                             [[rule["unit"], rule["token_class"], rule["tokens_per_unit"]] for rule in row["rules"]], right={2})
                     for row in rows)


def rejected_stats(stats: RejectedStats) -> str:
    sources = [[source, str(count)] for source, count in stats.by_source.items()]
    if stats.others:
        sources.append(["(other sources)", str(stats.others)])
    return (table(["reason", "rejected"], [[reason, str(count)] for reason, count in stats.by_reason.items()], right={1})
            + "\n\n" + table(["source", "rejected"], sources, right={1}) + f"\n\n{stats.total} rejected in all")


def rejected_page(page: RejectedPage, reason_code: str | None, zone: str) -> str:
    """One page of rejected usage, then how many it shows of how many and the next page's --after."""
    shown = (rows_table(page.rows, REJECTED_COLUMNS, zone) if page.rows
             else "nothing rejected" + (f" for {reason_code}" if reason_code else ""))
    more = f"; next page: --after {page.next_after}" if page.next_after else ""
    return f"{shown}\n{len(page.rows)} shown of {page.total}{more}"


def rejected_stats_document(stats: RejectedStats) -> dict[str, Any]:
    return {"total": stats.total, "by_reason": stats.by_reason, "by_source": stats.by_source, "other_sources": stats.others}


def registry_answer(outcomes: list[Outcome], wait_s: float) -> tuple[str | None, list[str], str | None]:
    """What metering made of registry changes: the line saying what it applied
    (None if nothing), the reasons it refused each of several, and the failure
    to report when it refused any or has not answered within `wait_s`."""
    refused = [outcome.reason for outcome in outcomes if isinstance(outcome, Refused)]
    unanswered = outcomes.count(None)
    applied = outcomes.count("applied")
    one = len(outcomes) == 1
    said = None
    if applied:
        said = (("metering applied it" if one else "metering applied "
                 + ("them" if applied == len(outcomes) else f"{applied} of {len(outcomes)}"))
                + ": usage sent from now on is metered against " + ("it" if one else "them"))
    reasons = [f"refused: {reason}" for reason in refused] if not one else []
    failure = None
    if refused:
        unanswered_too = f"; {unanswered} not answered within {wait_s:g} s" if unanswered else ""
        failure = (f"metering refused it: {refused[0]}" if one else
                   f"metering refused {len(refused)} of {len(outcomes)} changes (reasons above){unanswered_too}")
    elif unanswered:
        failure = (f"metering has not answered within {wait_s:g} s (is metering running? `tokenhub status`); "
                   + ("the change waits on registry.changed and metering applies or refuses it when it reads it"
                      if one else f"{unanswered} changes wait on registry.changed and metering applies or refuses "
                                  "them when it reads them"))
    return said, reasons, failure
