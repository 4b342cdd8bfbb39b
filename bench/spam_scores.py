"""SpamAssassin scores of every shipped email, offline: its section of bench/RESULTS.md.

Each email (the shipped broadcasts' too) is sent through the real path on a stepped local runtime (funnelpilot_local.shipped_emails),
taken from the outbox as SES got it, less the ``X-SES-*`` headers SES reads and removes before
sending, and scored by ``spamassassin -L -t`` (Debian's package with its default rules; ``-L``: local
tests only, no network lookups, so no DNS blocklist, SPF or DKIM result; no Bayes database). Goal:
every email below 1.0 (5.0 is SpamAssassin's own spam threshold). ``make bench`` runs it as part of
bench/run.py; alone, ``python bench/spam_scores.py`` rewrites only this section of RESULTS.md.
"""
import re
import shutil
import subprocess
import sys
import tempfile
import time
from email import message_from_bytes, policy
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEADING = "## Spam scores (SpamAssassin, offline, default rules)"
GOAL = 1.0
_RULE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s+([A-Z0-9_]+)\s+(.*)$")


def delivered(raw: bytes) -> bytes:
    """The message as SES sends it: without the X-SES-* headers it reads (message tags)."""
    mail = message_from_bytes(raw, policy=policy.SMTP)
    for name in {k for k in mail.keys() if k.lower().startswith("x-ses-")}:
        del mail[name]
    return mail.as_bytes()


def score(raw: bytes) -> tuple[float, list[tuple[str, float]], str]:
    """(score, [(rule, points)], SpamAssassin's version) of one message."""
    done = subprocess.run(["spamassassin", "-L", "-t"], input=raw, capture_output=True, timeout=300, check=True)
    report = done.stdout.decode("utf-8", "replace")
    total = float(re.search(r"Content analysis details:\s+\((-?[\d.]+) points", report)[1])
    version = re.search(r"version=([\d.]+)", report)
    table = report.split("---- ----", 1)[1].split("\n", 1)[1].split("\n\n", 1)[0]
    hits = [(m[2], float(m[1])) for m in map(_RULE.match, table.splitlines()) if m]
    return total, hits, version[1] if version else "?"


def measure() -> dict:
    """{"rows": [(email, score, hits)], "version": ...}, or {"missing": why} without SpamAssassin."""
    if shutil.which("spamassassin") is None:
        return {"missing": "spamassassin is not installed (apt-get install spamassassin; make bench does it as root)"}
    from funnelpilot_local import shipped_emails
    from funnelpilot_local.demo import START
    from funnelpilot_local.runtime import Runtime

    with tempfile.TemporaryDirectory() as tmp, Runtime(stepped=True, start=START, state_dir=Path(tmp)) as rt:
        mails = {**shipped_emails.send_all(rt), **shipped_emails.send_broadcasts(rt)}
    rows, version = [], "?"
    for name, raw in sorted(mails.items()):
        total, hits, version = score(delivered(raw))
        rows.append((name, total, hits))
    return {"rows": rows, "version": version}


def render(result: dict) -> list[str]:
    out = ["", HEADING, ""]
    if "missing" in result:
        return out + [f"Not measured on this run: {result['missing']}."]
    rows = result["rows"]
    worst = max(s for _, s, _ in rows)
    out += [f"`spamassassin -L -t` {result['version']} (default rules, local tests only) on each shipped email as SES "
            "sends it, through the real send path (`funnelpilot_local.shipped_emails`: tracked links, open pixel, "
            f"headers). Goal: every email below {GOAL} ({'met' if worst < GOAL else '**missed**'}: the highest is "
            f"{worst:.1f}); SpamAssassin's own spam threshold is 5.0. Rules at 0 points are informational "
            "(NO_RECEIVED, NO_RELAYS: scored before any relay; WEIRD_PORT: the local API's :3000 links).", "",
            "| email | score | rules that hit (points) |", "|---|---|---|"]
    for name, total, hits in rows:
        listed = ", ".join(f"{rule} ({points:g})" for rule, points in hits) or "–"
        out.append(f"| {name} | {total:.1f} | {listed} |")
    return out


def replace_section(text: str, section: list[str]) -> str:
    """RESULTS.md with this section replaced (or appended): from its heading to the next ``## `` heading."""
    body = "\n".join(section).strip("\n")
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |^This run: |\Z)", re.S | re.M)
    if pattern.search(text):
        return pattern.sub(lambda _: body + "\n\n", text, count=1)
    head, sep, tail = text.rpartition("\nThis run: ")  # bench/run.py's closing line stays last
    if sep:
        return head.rstrip("\n") + "\n\n" + body + "\n" + sep + tail
    return text.rstrip("\n") + "\n\n" + body + "\n"


def main() -> int:
    started = time.monotonic()
    result = measure()
    section = render(result)
    results = HERE / "RESULTS.md"
    results.write_text(replace_section(results.read_text() if results.exists() else "", section))
    print("\n".join(section))
    print(f"[{time.monotonic() - started:.0f} s] written to {results}", file=sys.stderr)
    return 0 if "rows" in result and all(s < GOAL for _, s, _ in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
