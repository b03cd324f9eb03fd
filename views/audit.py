"""The auditor's reports as people read them: replay, verify, statement and restore."""

from __future__ import annotations

from decimal import Decimal

from tokenhub.audit.replay import ReplayReport
from tokenhub.audit.restore import RestoreReport
from tokenhub.audit.statement import Statement
from tokenhub.audit.verify import VIOLATIONS_SHOWN_MAX, VerifyReport
from tokenhub.views.invoices import OVERAGE_MARK
from tokenhub.views.text import local, period_range, table


def replay(report: ReplayReport) -> str:
    where = "tokens.priced" if report.source == "topic" else "the ledger's Priced archive"
    when = f" as of {report.as_of.isoformat()}" if report.as_of else ""  # as given, in the zone the auditor named
    lines = []
    if not report.differences:
        lines.append(f"replay OK: {report.events} Priced events from {where}{when} rebuilt "
                     f"{len(report.rebuilt) if report.bu is None else 1} business units; every balance equals the ledger's projection")
    else:
        lines.append(f"replay FAILED: {len(report.differences)} differences ({report.events} events read from {where}{when})")
        lines += [f"  {difference.bu} {difference.figure}: rebuilt {difference.rebuilt:f} != projected "
                  f"{difference.projected:f}  [{difference.row(report.as_of)}]" for difference in report.differences]
    if report.conflicts:
        lines.append(f"  note: {report.conflicts} later copies on the topic reused an id with other content; the first was kept")
    if report.repricing is not None:
        repricing = report.repricing
        if report.ok or not (repricing.mismatches or repricing.unrecomputable or report.repriced_differences):
            lines.append(f"reprice OK: {len(repricing.amounts)} Priced recomputed from their TokenConsumed and book versions "
                         f"agree to the last digit ({repricing.kept} period tier adjustments taken as posted)")
        else:
            lines.append(f"reprice FAILED: {len(repricing.mismatches)} amounts differ, {len(repricing.unrecomputable)} "
                         f"cannot be recomputed, {len(report.repriced_differences)} balances differ")
            lines += [f"  Priced {priced_id} ({kind}): recorded {recorded:f}, recomputed {recomputed:f}"
                      for priced_id, kind, recorded, recomputed in repricing.mismatches[:VIOLATIONS_SHOWN_MAX]]
            lines += [f"  Priced {priced_id}: {why}" for priced_id, why in repricing.unrecomputable[:VIOLATIONS_SHOWN_MAX]]
            lines += [f"  {difference.bu} {difference.figure}: repriced {difference.rebuilt:f} != projected {difference.projected:f}"
                      for difference in report.repriced_differences]
    return "\n".join(lines)


def verify(report: VerifyReport) -> str:
    lines = [f"Token Hub verify{' of ' + report.scope if report.scope else ''}"]
    for check in report.checks:
        status = "SKIPPED" if check.skipped else ("ok" if check.ok else "FAILED")
        lines.append(f"  [{status:>7}] {check.name:<12} {check.title} ({check.examined} examined"
                     + (f"; {check.skipped}" if check.skipped else "") + (f"; {len(check.violations)} violations" if check.violations else "") + ")")
        for violation in check.violations[:VIOLATIONS_SHOWN_MAX]:
            lines.append(f"      {violation.subject}: {violation.detail}")
        if len(check.violations) > VIOLATIONS_SHOWN_MAX:
            lines.append(f"      ... and {len(check.violations) - VIOLATIONS_SHOWN_MAX} more (--json lists all)")
    violations = len(report.violations)
    lines.append("verify OK: every chain and invariant holds" if report.ok else f"verify FAILED: {violations} violations")
    return "\n".join(lines)


def statement(found: Statement, currency: str, zone: str) -> str:
    header = (f"STATEMENT {found.bu}  {period_range(found.start, found.end, zone)} (end exclusive, by {found.by})")
    rows = table(
        ("event time", "entry", "kind", "payer", "consumer", "provider", "model", f"spend {currency}", f"revenue {currency}",
         "Tokens consumed", "Tokens served"),
        [(local(line.event_time, zone, seconds=True), f"{line.chain}#{line.sequence}",
          f"{line.kind}, {OVERAGE_MARK}" if line.overage else line.kind, line.payer_bu,
          line.consumer_bu, line.provider_bu, line.model, f"{line.effect['spend']:f}", f"{line.effect['revenue']:f}",
          f"{line.effect['tokens_consumed']:,}", f"{line.effect['tokens_served']:,}") for line in found.lines],
        right={7, 8, 9, 10},
    )
    def figures(label: str, values: dict[str, Decimal]) -> str:
        return (f"  {label:<10} spend {values['spend']:f}  revenue {values['revenue']:f}  net {values['revenue'] - values['spend']:f}"
                f"  Tokens consumed {values['tokens_consumed']:,}  served {values['tokens_served']:,}")

    footer = "\n".join([figures("opening", found.opening), figures("entries", found.movements), figures("closing", found.closing),
                        "  opening + entries = closing" if found.agrees or found.truncated else "  MISMATCH: opening + entries != closing"]
                       + ([f"  {OVERAGE_MARK}: spend {found.overage:f} of the entries' spend was posted while the quota "
                           "was exhausted (billed all the same, in the figures above)"]
                          if any(line.overage for line in found.lines) else []))
    more = f"\n  (first {len(found.lines)} entries shown; narrow the window for the rest)" if found.truncated else ""
    return f"{header}\n{rows}\n{footer}{more}"


def restored(report: RestoreReport, source: str) -> str:
    return (f"restored {report.posted} entries from {report.priced} Priced ({source}); "
            f"{report.duplicates} duplicates, {report.conflicts} conflicting copies skipped; {report.budgets} budgets; "
            f"{report.alerts} budget alerts recorded; {report.outbox_cleared} outbox rows dropped (already published)")
