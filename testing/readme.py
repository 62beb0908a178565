"""Code blocks of README.md, for the tests that run them as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def snippet(language: str, defining: str) -> str:
    """The chat API section's code block in `language` that defines `defining`."""
    section = README.read_text().split("## The chat API", 1)[1].split("\n## ", 1)[0]
    [code] = [
        code
        for code in re.findall(rf"```{language}\n(.*?)```", section, re.S)
        if re.search(rf"\b(def|function) {defining}\(", code)
    ]
    return code
