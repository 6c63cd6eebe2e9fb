"""Per-user state folded from events, the Feast wrapper, catalog and (later) context compression."""
