"""Numbers, durations and tables as text: the one home of each format the commands, cards and reports
print. No state, no imports beyond the standard library."""

from __future__ import annotations


def fmt(value) -> str:
    """A metric for a table or a model card: floats to 4 decimals, anything else as it prints."""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def fmt_compact(value) -> str:
    """A value for a report cell: floats to 4 decimals, or 3 significant digits below 0.001 (a learning
    rate, a tiny loss); None as YAML writes it ("null")."""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return "null" if value is None else str(value)


def fmt_seconds(value: float | None) -> str:
    """A measured time to a tenth of a second ("12.3 s"); "-" when there is none."""
    return "-" if value is None else f"{value:.1f} s"


def duration(seconds: float) -> str:
    """An estimate in words, to the second under an hour: "45 s", "2 min 05 s", "1 h 02 min"."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def clock(seconds: float) -> str:
    """A time as a clock shows it, for progress lines: "2:05", "1:02:05"."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return f"{seconds // 60}:{seconds % 60:02d}"


def table(rows: list[tuple[str, ...]], header: tuple[str, ...] | None = None) -> str:
    """Plain columns separated by two spaces, a dashed line under the header (no rich: for any stream)."""
    rows = [tuple(str(c) for c in r) for r in rows]
    if header:
        rows = [header, *rows]
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if header:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
