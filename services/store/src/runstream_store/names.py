"""Names shared by the value encoder and the table reader, without their imports.

``runstream table`` imports only this and ``table`` (not pydantic's message models).
"""

from __future__ import annotations

COMMENT = "comment"

# binary summary type -> what a table shows in its place
PLACEHOLDERS: dict[str, str] = {
    "trendline": "<sparkline>",
    "thumbnail": "<thumbnail>",
    "numpy": "<ndarray>",
}
