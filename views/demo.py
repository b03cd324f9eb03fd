"""The demo's report, section by section, and the lines that say where its data
stays and how to open the dashboard on it."""

from __future__ import annotations

from datetime import datetime

from tokenhub.bench.demo import DemoResult, FinanceKey
from tokenhub.contracts.pricebook import BookIndex
from tokenhub.views.audit import replay, verify
from tokenhub.views.invoices import invoice_list, invoice_text, settlement
from tokenhub.views.ledger import balances_table
from tokenhub.views.text import table


def section(title: str) -> str:
    return f"\n== {title} " + "=" * max(0, 70 - len(title))


def demo(result: DemoResult, zone: str, books: BookIndex) -> str:
    """The demo's figures, section by section."""
    figures = result.counters
    parts = [
        section("pipeline"),
        f"metered {figures.get('metering.accepted', 0)} events into {figures.get('metering.consumed', 0)} "
        f"TokenConsumed (funding splits), rejected {figures.get('metering.rejected', 0)} with reasons, "
        f"priced {figures.get('pricing.priced', 0)}, posted {figures.get('ledger.posted', 0)}",
        section("Tokens by class: text, image, video and agent usage"),
        table(["class", "models", "Tokens"], [[row.token_class, row.models, f"{row.tokens:,}"]
                                                     for row in result.tokens_by_class], right={2}),
        section("shared costs: funding agreements applied"),
        table(["agreement", "consumer", "payer", "share %", "events", "Tokens"],
                     [[row.agreement, row.consumer_bu, row.payer_bu, row.share_percent, str(row.events), f"{row.tokens:,}"]
                      for row in result.funding_shares], right={3, 4, 5}),
        section("balances per business unit (CNY, Tokens)"),
        balances_table(result.balances, "CNY"),
        section(f"independent recomputation of {result.recomputed_bu}'s spend"),
        f"from the price book and the events: {result.recomputed_spend:f} CNY\n"
        f"ledger:                             {result.ledger_spend:f} CNY\n"
        f"{'MATCH' if result.recomputed_spend == result.ledger_spend else 'MISMATCH'}",
        section(f"month end: {len(result.issued)} invoices issued for {result.month}"),
        invoice_list(result.invoices, zone),
        "",
        invoice_text(result.shown_invoice, zone, books),
        section(f"settlement between business units for {result.month}"),
        settlement(result.settlement, result.settlement_final),
        section("replay from tokens.priced"),
        replay(result.replay),
        section("audit: tokenhub verify"),
        verify(result.verify),
    ]
    return "\n".join(parts)


def where(folder: str, beside: str | None, replaces_demo: bool) -> str:
    """Where the demo keeps its data; `beside`: a stack that is not a demo's, left as it is."""
    if beside is not None:
        return (f"{beside} holds a stack that is not a demo's: it is left as it is, "
                f"and the demo keeps its data in {folder} instead.")
    if replaces_demo:
        return f"replacing the previous demo's data in {folder} (each run starts afresh, so its figures are the same)."
    return f"the demo keeps its data in {folder}, for tokenhub up to start on."


def key_line(key: FinanceKey) -> str:
    return f"sign in with this finance API key ({key.key_id}, shown once): {key.key}"


def kept_up(url: str, docs_url: str, key: FinanceKey, folder: str) -> str:
    """`tokenhub demo --keep`: the stack stays up with the dashboard on the demo's data."""
    return (f"\ndashboard on the demo's data: {url}\n"
            f"  {key_line(key)}\n"
            f"  api {docs_url}; the data stays in {folder} for tokenhub up\n"
            "Ctrl-C stops everything.")


def how_to_open(folder: str, *, elsewhere: bool, command: str, port: str, key: FinanceKey, now: datetime,
                demo_env_file: str) -> str:
    """The last lines: how to open the dashboard on the data the demo kept
    (`elsewhere`: in a folder other than the usual, named to `tokenhub up`)."""
    prefix = f"TOKENHUB_STATE_DIR={folder} " if elsewhere else ""
    return (f"The demo's data stays in {folder}; to open the dashboard on it:\n"
            f"  {prefix}{command} up      (in this folder; Ctrl-C stops it)\n"
            f"  then open http://127.0.0.1:{port}/dashboard/ (tokenhub up prints the address: "
            f"another port when {port} is taken)\n"
            f"  {key_line(key)}\n"
            f"  another key, while it is up: {prefix}{command} apikey create --role finance --reason \"the demo\"\n"
            f"The stack keeps the demo's clock ({now.isoformat()}, in {folder}/{demo_env_file}), "
            f"so the pages show {now:%Y-%m}; the next tokenhub demo here replaces this data.")
