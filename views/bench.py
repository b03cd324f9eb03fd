"""The benchmark's report as people read it: rates against the passthrough
baselines, latency, replay, close and verify, bytes stored, CPU per process,
and issue 21's targets met or missed."""

from __future__ import annotations

from tokenhub.bench.benchmark import HOPS, Report, Target, targets


def report_text(report: Report, cores: int | None) -> str:
    """The report; `cores`: of the machine it ran on."""
    lines = [
        f"Token Hub benchmark: {report.events:,} usage events, {report.instances} instance(s) per service, "
        f"{cores} cores, broker {report.broker}",
    ]
    lines += [f"  {f'baseline ({client}, {HOPS} hops)':<41}{stats.events_per_s:>12,.0f} events/s"
              f"   ({stats.hop_cpu_us_per_event:,.1f} us CPU per event per hop,"
              f" broker {stats.broker_cpu_us_per_event:,.1f} us per event)"
              for client, stats in report.baselines.items()]
    lines += [
        f"  pipeline end to end (emitted -> ledger)  {report.pipeline_events_per_s:>12,.0f} events/s"
        + (f"   ({report.ratio_to_baseline:.2f} x baseline)" if report.ratio_to_baseline else ""),
    ]
    lines += [f"    {stage:<36} {rate:>12,.0f} events/s" for stage, rate in report.service_events_per_s.items()]
    lines += [
        f"  latency at {report.latency_rate_offered:,}/s offered ({report.latency_events:,} events): "
        f"p50 {report.latency_ms_p50:,.0f} ms, p95 {report.latency_ms_p95:,.0f} ms, p99 {report.latency_ms_p99:,.0f} ms",
        f"  replay from the archive                  {report.replay_archive_events_per_s:>12,.0f} events/s"
        + _times(report.replay_archive_ratio_to_baseline),
        f"  replay from the topic                    {report.replay_topic_events_per_s:>12,.0f} events/s"
        f"   ({report.replay_events:,} Priced)",
        f"  invoice close {report.close_period:<8} (early)          {report.close_usage_events_per_s:>12,.0f} usage events/s"
        f"   ({report.close_usage_events:,} usage events, {report.close_invoices:,} invoices, {report.close_lines:,} lines"
        f" in {report.close_seconds:,.2f} s; CPU {report.close_cpu_seconds:,.2f} s, PostgreSQL "
        f"{report.close_postgres_cpu_seconds:,.2f} s)" + _times(report.close_ratio_to_baseline),
        f"  verify (chains, published heads, invariants) {report.verify_entries_per_s:>8,.0f} entries/s"
        f"   ({report.verify_entries:,} entries in {report.verify_seconds:,.1f} s; CPU {report.verify_cpu_seconds:,.1f} s,"
        f" PostgreSQL {report.verify_postgres_cpu_seconds:,.1f} s)" + _times(report.verify_ratio_to_baseline) + "   "
        + ("all hold" if report.verify_violations == 0 else f"{report.verify_violations} VIOLATIONS"),
    ]
    lines += [f"    {name:<76} {step['seconds']:>6.2f} s, CPU {step['cpu_seconds']:>5.2f} s"
              for name, step in report.verify_steps.items()]
    lines += [
        f"  stored per usage event                   {report.bytes_per_usage_event:>12,.0f} bytes"
        f"   ({report.stored_bytes / 1e6:,.1f} MB over the four schemas after VACUUM)",
        "    relation                             total MB   heap MB  TOAST MB  index MB        rows",
    ]
    lines += [f"    {relation['relation']:<34} {relation['total_bytes'] / 1e6:>10.1f} {relation['heap_bytes'] / 1e6:>9.1f}"
              f" {relation['toast_bytes'] / 1e6:>9.1f} {relation['index_bytes'] / 1e6:>9.1f} {relation['rows']:>11,}"
              for relation in report.stored_relations]
    lines += ["    largest indexes: " + ", ".join(f"{index['index']} {index['bytes'] / 1e6:,.1f} MB"
                                                 for index in report.stored_indexes)]
    lines += [
        f"  CPU per usage event, all processes       {report.cpu_ms_per_event:>12,.3f} ms",
        "  process              CPU s   us per event   peak RSS MB",
    ]
    per_event = 1e6 / max(1, report.events + report.latency_events)
    lines += [f"  {name:<18} {stats.cpu_seconds:>7.1f} {stats.cpu_seconds * per_event:>14,.0f} {stats.peak_rss_mb:>13.1f}"
              for name, stats in report.processes.items()]
    lines.append("  issue 21's targets                                   figure        target       stretch")
    lines += [_target_line(target) for target in targets(report)]
    if report.statements:
        lines.append("  PostgreSQL's busiest statements in the throughput phase:")
        lines += [f"  {row['total_ms']:>10,.0f} ms {row['calls']:>7,} calls {row['rows']:>9,} rows  {row['query']}"
                  for row in report.statements]
    return "\n".join(lines)


def _times(ratio: float) -> str:
    return f"   ({ratio:,.2f} x baseline)" if ratio else ""


def _bound(target: Target, bound: float | None) -> str:
    if bound is None:
        return "-"
    met = target.met(bound)
    return f"{'<=' if target.at_most else '>='} {bound:,.{_decimals(bound)}f} {'met' if met else 'missed'}"


def _decimals(value: float) -> int:
    return 0 if value >= 100 or value == int(value) and value >= 10 else 3 if value < 1 else 2


def _target_line(target: Target) -> str:
    figure = f"{target.figure:,.{_decimals(target.figure)}f} {target.unit}"
    judged = _bound(target, target.target) if target.target is not None else "not judged in this run"
    return f"    {target.measure:<48} {figure:>20}  {judged:>18}  {_bound(target, target.stretch):>18}"
