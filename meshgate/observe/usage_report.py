"""Usage summaries: requests, tokens, cost and errors grouped by team, key, model or day.

Calls refused before going upstream (budget, rate limit, grants, capabilities) count as requests,
errors and `refused`, with no tokens and $0: the cost is what was really spent."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from meshgate.store import Database

GROUPS = ("team", "key", "model", "day")

_DAY = {
    "sqlite": "strftime('%Y-%m-%d', ts, 'unixepoch')",
    "postgresql": "to_char(to_timestamp(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}


def parse_since(text: str | None) -> float | None:
    """`7d`, `24h`, `30m`, an ISO date or time (UTC unless it says otherwise), or None for all time."""
    if not text:
        return None
    units = {"d": 86400, "h": 3600, "m": 60}
    if text[-1] in units and text[:-1].isdigit():
        return time.time() - int(text[:-1]) * units[text[-1]]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"since: {text!r} is neither a duration (7d, 24h, 30m) nor an ISO date") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


async def usage_report(db: Database, by: str = "team", since: float | None = None) -> list[dict[str, Any]]:
    if by not in GROUPS:
        raise ValueError(f"by: {by!r} is not one of {', '.join(GROUPS)}")
    column = {"team": "COALESCE(team, '-')", "key": "COALESCE(key_id, '-')", "model": "model"}.get(by) or _DAY[
        db.dialect
    ]
    sql = (
        f"SELECT {column} AS grp, COUNT(*) AS requests, "
        "SUM(CASE WHEN refused = 0 THEN prompt_tokens ELSE 0 END) AS prompt_tokens, "
        "SUM(CASE WHEN refused = 0 THEN completion_tokens ELSE 0 END) AS completion_tokens, "
        "SUM(CASE WHEN refused = 0 THEN cost_usd ELSE 0 END) AS cost_usd, "
        "SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS errors, "
        "SUM(CASE WHEN refused <> 0 THEN 1 ELSE 0 END) AS refused, AVG(latency_ms) AS avg_latency_ms "
        "FROM usage WHERE ts >= ? GROUP BY grp ORDER BY grp"
    )
    rows = await db.fetchall(sql, (since if since is not None else 0.0,))
    return [
        {
            by: row["grp"],
            "requests": int(row["requests"]),
            "prompt_tokens": int(row["prompt_tokens"] or 0),
            "completion_tokens": int(row["completion_tokens"] or 0),
            "cost_usd": round(float(row["cost_usd"] or 0), 6),
            "errors": int(row["errors"] or 0),
            "refused": int(row["refused"] or 0),
            "avg_latency_ms": round(float(row["avg_latency_ms"] or 0), 1),
        }
        for row in rows
    ]
