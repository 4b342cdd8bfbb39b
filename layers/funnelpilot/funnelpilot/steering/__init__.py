"""What steers the marketing: revenue attributed to funnels and emails (``attribution``), A/B
significance and automatic winners (``abtest``), and UTM tags on links to the site (``utm``).
Settings: ``infra/steering.yaml``."""
from functools import cache
from pathlib import Path

import yaml

from funnelpilot.config import config


@cache
def settings(content_dir: Path | None = None) -> dict:
    """``infra/steering.yaml`` (of the content, or of ``content_dir``) with its defaults
    (README: "Revenue, A/B tests and UTM tags")."""
    path = Path(content_dir or config().content_dir) / "steering.yaml"
    doc = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    utm = doc.get("utm", {})
    return {"attribution_window_days": float((doc.get("attribution") or {}).get("window_days", 7)),
            "utm": {"utm_source": "funnelpilot", "utm_medium": "email", **(utm or {})} if utm is not False else False}
