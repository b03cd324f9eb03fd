"""Prices in force, consumption parked for want of a price, and what a
repricing corrected."""

from __future__ import annotations

from typing import Any

from tokenhub.contracts.events import ModelPrice, PriceBookPublished
from tokenhub.contracts.money import format_amount
from tokenhub.services.pricing.handlers import RepriceReport
from tokenhub.services.pricing.litellm import LiteLLMImport
from tokenhub.services.pricing.queries import ParkedConsumption
from tokenhub.views.text import local, table


def prices(found: list[tuple[PriceBookPublished, ModelPrice]], zone: str) -> str:
    """The prices in force for each model: base and context tiers per class, adjustments, period tiers."""
    lines = []
    for book, price in found:
        lines.append(f"{price.model}: book {book.book_id} v{book.version}, effective {local(book.effective_from, zone)}, "
                     f"{book.currency} per million Tokens" + (f" ({price.note})" if price.note else ""))
        rows = [["base", name, f"{amount:f}".rstrip("0").rstrip(".")] for name, amount in price.unit_prices_per_million.items()]
        rows += [[f"{tier.name} (input > {tier.above_input_tokens:,})", name, f"{amount:f}".rstrip("0").rstrip(".")]
                 for tier in price.context_tiers for name, amount in tier.unit_prices_per_million.items()]
        lines.append(table(["tier", "class", "price"], rows, right={2}))
        lines += [f"  {adjustment.bu} pays x{adjustment.factor}" for adjustment in price.bu_adjustments]
        if price.period_tiers:
            lines.append(f"  period tiers ({price.period_tiers.mode}): " + ", ".join(
                f"up to {tier.up_to_tokens or 'more'}: {tier.unit_price_per_million}/M + {tier.flat_fee}"
                for tier in price.period_tiers.tiers))
    return "\n".join(lines)


def prices_document(found: list[tuple[PriceBookPublished, ModelPrice]]) -> list[dict[str, Any]]:
    return [{"book_id": book.book_id, "version": book.version, "effective_from": book.effective_from,
             "currency": book.currency, **price.model_dump(exclude_none=True)} for book, price in found]


def book_published(book: PriceBookPublished) -> str:
    return (f"published price book {book.book_id} version {book.version} effective {book.effective_from.isoformat()} "
            f"({len(book.models)} models)")


def book_stored(stored: bool, waited_s: float) -> str:
    """Whether pricing stored a book just published (a `tokenhub reprice` typed next sees it then)."""
    if stored:
        return "pricing has stored it; parked consumption it prices is being priced"
    return (f"pricing has not stored it within {waited_s:.0f} s (is the pricing service running?); "
            "it will when it reads pricebook.published")


def left_out(imported: LiteLLMImport) -> list[str]:
    """What an import from a LiteLLM price map left out, and why."""
    return ([f"skipped: {reason}" for reason in imported.skipped.values()]
            + [f"{model}: left out {', '.join(keys)} (no such price in a book)" for model, keys in imported.ignored.items()])


def parked(rows: list[ParkedConsumption], total: int, zone: str) -> str:
    return (table(["consumed id", "payer", "model", "event time", "why"],
                  [[str(row.consumed_id), row.payer_bu, row.model, local(row.event_time, zone), row.reason] for row in rows],
                  right=set())
            + f"\n{total} parked" + (f", the first {len(rows)} shown (--limit)" if total > len(rows) else ""))


def parked_document(rows: list[ParkedConsumption]) -> list[dict[str, Any]]:
    return [{"consumed_id": row.consumed_id, "payer_bu": row.payer_bu, "model": row.model, "event_time": row.event_time,
             "parked_at": row.parked_at, "reason": row.reason} for row in rows]


def repriced(report: RepriceReport, currency: str) -> str:
    return (f"examined {report.examined} priced consumptions; corrected {report.corrected} "
            f"({2 * report.corrected} events: a reversal and a correction each); "
            f"spend changes by {format_amount(report.difference)} {currency}")


def repriced_document(report: RepriceReport) -> dict[str, Any]:
    return {"examined": report.examined, "corrected": report.corrected, "events": 2 * report.corrected,
            "unpriceable": report.unpriceable, "difference": report.difference}
