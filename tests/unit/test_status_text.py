"""`tokenhub status` as people read it: every time in company time, the zone said once."""

from __future__ import annotations

from pathlib import Path

from tokenhub.infra.status import ServiceLag, StackStatus
from tokenhub.views import stack


def test_status_shows_process_times_and_faults_in_company_time() -> None:
    report = StackStatus(
        state_dir=Path(".tokenhub"), running=True,
        supervisor={"pid": 4242, "started_at": "2026-03-14T02:30:00+00:00"},
        processes=[{"name": "ledger", "pid": 4300, "state": "running", "started_at": "2026-03-14T02:30:05Z",
                    "restarts": 1, "last_exit_code": -9, "last_exit_at": "2026-03-14T02:31:00+00:00"}],
        faults=[{"noticed_at": "2026-03-14T02:31:00+00:00", "process": "ledger", "exit_code": -9,
                 "seconds_to_resume": 1.25, "outcome": "restarted"}],
        endpoints={}, lags=[ServiceLag("ledger", 0, {"tokens.priced": 0}, 0)])
    text = stack.status(report, "Asia/Shanghai")
    lines = text.splitlines()
    assert lines[0] == "Token Hub is up in .tokenhub (supervisor pid 4242, since 2026-03-14 10:30:00); times in Asia/Shanghai"
    assert lines[3].split() == ["ledger", "4300", "running", "2026-03-14", "10:30:05", "1", "-9", "at", "2026-03-14",
                                "10:31:00"]
    assert "  2026-03-14 10:31:00  ledger exited with status -9; back after 1.2 s: restarted" in lines
