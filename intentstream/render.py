"""How the CLI and the demo show a user's recommendations in the terminal."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from contracts.recs import Recommendations


def print_recommendations(result: Recommendations, limit: int = 10) -> None:
    """A table of the first `limit` items (rank, item, score, route, explanation, tag) and the intents."""
    title = f"user {result.user_id} · trigger {result.trigger} · state v{result.state_version}"
    if result.fallback_reason:
        title += f" · fallback: {result.fallback_reason}"
    table = Table(title=title, show_lines=False)
    for column in ("#", "item", "score", "route", "why"):
        table.add_column(column)
    table.add_column("tag")
    for rank, item in enumerate(result.items[:limit], 1):
        table.add_row(str(rank), item.item_id, f"{item.score:.3f}", item.route, item.explanation, item.tag or "")
    Console().print(table)
    for intent in result.intents:
        Console().print(f"  persona [bold]{intent.persona}[/bold]: {', '.join(intent.tags)}")
