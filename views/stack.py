"""The local stack as people read it: `tokenhub up`'s banner, `status`, `init`,
and a stack already running in a folder."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from tokenhub.infra.boot import BootReport
from tokenhub.infra.status import StackStatus
from tokenhub.infra.supervisor import AlreadyRunning
from tokenhub.views.text import figure, local


def prepared(report: BootReport) -> str:
    """What `tokenhub init` did."""
    return (f"topics and migrations ready ({len(report.migrations)} migrations applied, "
            f"{len(report.topics_created)} topics created, {report.republished_total} produced events republished); "
            f"settlement currency {report.currency}")


def clock_line(fixed: str | None, kept: str | None, demo_env: Path) -> str:
    """A fixed clock is said: month to date, pages and accepted usage go by it.
    `fixed`: TOKENHUB_NOW of the environment; `kept`: the demo's, kept in `demo_env`."""
    if fixed:
        return f"  clock     {fixed}, fixed (TOKENHUB_NOW)\n"
    if kept:
        return f"  clock     {kept}, fixed: the data is the demo's, and so is the day ({demo_env})\n"
    return ""


def up(*, bootstrap_servers: str, database_url: str, currency: str, clock: str, services: tuple[str, ...],
       state_dir: Path, http_port: str, api_port: str) -> str:
    """`tokenhub up`'s banner: where everything is, and what to type next."""
    return (
        "Token Hub is up.\n"
        f"  broker    {bootstrap_servers}\n"
        f"  database  {database_url}\n"
        f"  currency  {currency} (the deployment's settlement currency, recorded at first start)\n"
        f"{clock}"
        f"  services  {', '.join(services)} (logs in {state_dir / 'logs'})\n"
        f"  ingest    http://127.0.0.1:{http_port}/v1/events (API keys: tokenhub keys create)\n"
        f"  api       http://127.0.0.1:{api_port}/docs (keys: tokenhub apikey create --role finance --reason ...)\n"
        f"  dashboard http://127.0.0.1:{api_port}/dashboard/ (sign in with an API key)\n"
        "PostgreSQL, the broker and the services are supervised: what dies is restarted (tokenhub status).\n"
        "In another terminal in this folder: tokenhub emit --generate 1000, tokenhub balance\n"
        "Ctrl-C stops everything."
    )


def already_running(error: AlreadyRunning, state_dir: Path, zone: str) -> str:
    """`already running in .tokenhub (pid 4242, since 2026-03-14 10:30:00 Asia/Shanghai (+08:00))`."""
    since = local(datetime.fromisoformat(error.since), zone, seconds=True) if error.since else "unknown"
    return f"already running in {state_dir} (pid {error.pid or 'unknown'}, since {since})"


def status(report: StackStatus, zone: str) -> str:
    """The stack's processes, lag and faults; times in company time, the zone said once."""
    supervisor = report.supervisor or {}

    def shown(text: str | None) -> str:
        if not text:
            return "-"
        return f"{datetime.fromisoformat(text).astimezone(ZoneInfo(zone)):%Y-%m-%d %H:%M:%S}"

    lines = [f"Token Hub is up in {report.state_dir} (supervisor pid {supervisor.get('pid')}, "
             f"since {shown(supervisor.get('started_at'))}); times in {zone}", "",
             f"{'process':<10} {'pid':>8}  {'state':<10} {'since':<19} {'restarts':>8}  last exit"]
    for process in report.processes:
        last = (f"{process['last_exit_code']} at {shown(process['last_exit_at'])}"
                if process.get("last_exit_code") is not None else "-")
        lines.append(f"{process['name']:<10} {process.get('pid') or '-':>8}  {process['state']:<10} "
                     f"{shown(process.get('started_at')):<19} {process['restarts']:>8}  {last}")
    lines += ["", f"{'service':<10} {'lag':>10}  {'outbox':>8}  input topics (records not handled yet)"]
    for lag in report.lags:
        topics = ", ".join(f"{topic} {count}" for topic, count in lag.by_topic.items()) or "-"
        lines.append(f"{lag.service:<10} {figure(lag.records_behind):>10}  {figure(lag.outbox_events):>8}  {topics}")
    if report.faults:
        lines += ["", "recent faults:"]
        for fault in report.faults[-10:]:
            resumed = (f"back after {fault['seconds_to_resume']:.1f} s" if fault.get("seconds_to_resume") is not None
                       else "not back yet")
            lines.append(f"  {shown(fault['noticed_at'])}  {fault['process']} exited with status {fault['exit_code']}; "
                         f"{resumed}: {fault['outcome']}")
    lines += [f"(unmeasured: {problem})" for problem in report.problems]
    return "\n".join(lines)
