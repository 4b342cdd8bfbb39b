"""Funnel reports from the counters in the metrics table (see funnelpilot.metrics).

One Query per funnel (``pk = FUNNEL#<id>``, ``sk BETWEEN DAY#<from> AND DAY#<to>#…``) fetches
every row of the range; rows are summed over the days, and a template's (an A/B variant's)
figures are the sums of the step items that name it. Rates, as a marketer reads them:

- open % = unique human opens / (sent - bounced); machine opens (Apple MPP prefetches,
  scanners) are shown apart and never in the rate;
- click % = unique human clicks / (sent - bounced) (click rate, not click-to-open);
- conversion % = conversions attributed to the step (the step the contact was on when the
  goal was reached) / contacts who entered the step;
- drop-off = share of the contacts who entered the previous step (or the funnel) who did
  not enter this one;
- revenue = the amounts of the orders whose last human click in the attribution window came
  from the step's email (funnelpilot.steering.attribution); the funnel's is its steps' sum.
"""
import json
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path

from funnelpilot import aws, clock
from funnelpilot.config import config
from funnelpilot.errors import InvalidField
from funnelpilot.metrics import FUNNEL_ROW, STEP_METRICS, STEP_ONLY
from funnelpilot.steering import abtest, attribution

DEFAULT_DAYS = 30


def known_funnels(content_dir: Path | None = None, *, removed: bool = False) -> list[str]:
    """Funnel ids shipped as content: ``funnels/<id>.yaml`` (not other state machines, e.g. bulk);
    ``removed``: also those whose file was removed and that still drain (the compiler's copy beside
    their state machine, funnel_spec.compiled_copy), which have a report but take nobody in."""
    content = Path(content_dir or config().content_dir)
    folders = ("funnels", "statemachines") if removed else ("funnels",)
    return sorted({p.stem for folder in folders for p in (content / folder).glob("*.yaml")})


def step_order(funnel: str, content_dir: Path | None = None) -> list[str]:
    """State names of the funnel's state machine, in the order a contact meets them."""
    path = Path(content_dir or config().content_dir) / "statemachines" / f"{funnel}.asl.json"
    if not path.exists():
        return []
    states = json.loads(path.read_text())
    order: list[str] = []

    def walk(machine: dict) -> None:
        queue = [machine["StartAt"]]
        while queue:
            name = queue.pop(0)
            if name in order or name not in machine["States"]:
                continue
            order.append(name)
            state = machine["States"][name]
            nexts = [state.get("Next"), *(c.get("Next") for c in state.get("Choices", [])), state.get("Default"),
                     *(c.get("Next") for c in state.get("Catch", []))]
            queue.extend(n for n in nexts if n)
            for branch in state.get("Branches", []):
                walk(branch)

    walk(states)
    return order


def _day(field: str, value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidField(field, "expected a day as YYYY-MM-DD") from None


def day_range(start: str | None, end: str | None) -> tuple[str, str]:
    """Validated ISO days; defaults: the last 30 days up to today (on the funnelpilot clock)."""
    end_day = _day("to", end) if end else clock.utcnow().date()
    start_day = _day("from", start) if start else end_day - timedelta(days=DEFAULT_DAYS - 1)
    if start_day > end_day:
        raise InvalidField("from", "from is after to")
    return start_day.isoformat(), end_day.isoformat()


def query_rows(funnel: str, start: str, end: str, table: str | None = None, winners: bool = True) -> list[dict]:
    """Every counter row of the funnel between two days (inclusive), as plain dicts; with
    ``winners``, its A/B winners too (``WINNER#<split>`` items, funnelpilot.steering.abtest)."""
    queries = [("sk BETWEEN :lo AND :hi", {":lo": {"S": f"DAY#{start}#"}, ":hi": {"S": f"DAY#{end}#\uffff"}})]
    if winners:
        queries.append(("begins_with(sk, :w)", {":w": {"S": abtest.WINNER}}))
    rows = []
    for condition, values in queries:
        kwargs = {"TableName": table or config().metrics_table, "KeyConditionExpression": f"pk = :pk AND {condition}",
                  "ExpressionAttributeValues": {":pk": {"S": f"FUNNEL#{funnel}"}, **values}}
        while True:
            page = aws.dynamodb().query(**kwargs)
            rows += [{k: (v["S"] if "S" in v else int(v["N"])) for k, v in item.items()} for item in page["Items"]]
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return rows


def _pct(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 1) if whole else None


def _with_rates(counts: dict) -> dict:
    reached = counts.get("sent", 0) - counts.get("bounced", 0)
    counts["open_rate"] = _pct(counts.get("human_opens", 0), reached)
    counts["click_rate"] = _pct(counts.get("human_clicks", 0), reached)
    counts["conversion_rate"] = _pct(counts.get("conversions", 0), counts.get("entered", 0))
    return counts


def build(funnel: str, rows: list[dict], start: str, end: str, order: list[str] | None = None,
          splits: list[dict] | None = None) -> dict:
    """The report (the JSON of ``GET /funnels/{id}/report``) from counter rows; ``splits``: the
    funnel's A/B splits (abtest.splits, read from the content when None)."""
    sums: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    daily: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    winners = {row["sk"].removeprefix(abtest.WINNER): row for row in rows if row["sk"].startswith(abtest.WINNER)}
    for row in rows:
        if row["sk"].startswith(abtest.WINNER):
            continue
        day, _, name = row["sk"].removeprefix("DAY#").partition("#")
        counts = {k: v for k, v in row.items() if isinstance(v, int) and k != "expires_at"}
        for key, value in counts.items():
            sums[name][key] += value
        if not name.startswith("STEP#"):
            continue
        for key in ("sent", "human_opens", "human_clicks", "conversions"):
            if key in counts:
                daily[day][key] += counts[key]
        # a step item names its template and variant: their figures are the sums of their steps'
        labelled = [f"EMAIL#{row['template']}"] if row.get("template") else []
        if row.get("variant"):
            labelled.append(f"VARIANT#{name.removeprefix('STEP#')}#{row['variant']}")
        for label in labelled:
            for key, value in counts.items():
                if key not in STEP_ONLY:
                    sums[label][key] += value
    order = order if order is not None else step_order(funnel)
    names = [n.removeprefix("STEP#") for n in sums if n.startswith("STEP#")]
    rank = {name: i for i, name in enumerate(order)}
    names.sort(key=lambda n: (rank.get(n, len(rank)), n))

    def counts(name: str) -> dict:
        got = sums.get(name, {})
        out = {m: got.get(m, 0) for m in STEP_METRICS}
        out["blocked_by_reason"] = {k.removeprefix("blocked_"): v for k, v in sorted(got.items())
                                    if k.startswith("blocked_")}
        # deferred (the frequency cap): counted once per email; one sent later is in `sent`, one past
        # the funnel's limit in blocked_by_reason (skipped)
        out["deferred"] = got.get("deferred", 0)
        out["deferred_by_reason"] = {k.removeprefix("deferred_"): v for k, v in sorted(got.items())
                                     if k.startswith("deferred_")}
        out["revenue"], out["attributed_orders"] = attribution.revenue(got), got.get("attributed_orders", 0)
        return _with_rates(out)

    total = sums.get(FUNNEL_ROW, {})
    funnel_row = {k: total.get(k, 0) for k in ("entered", "completed", "conversions", "failed", "refused")}
    # a send that ended its journey counted the end on its step's row, in the send's ADD (funnelpilot.metrics)
    funnel_row["completed"] += sum(got.get("completed", 0) for name, got in sums.items() if name.startswith("STEP#"))
    funnel_row["refused_by_reason"] = {k.removeprefix("refused_"): v for k, v in sorted(total.items())
                                       if k.startswith("refused_")}  # hand-offs, and entries while draining
    funnel_row["conversion_rate"] = _pct(funnel_row["conversions"], funnel_row["entered"])
    attributed: dict[str, int] = defaultdict(int)  # the funnel's revenue: its steps'
    for name, got in sums.items():
        if name.startswith("STEP#"):
            for key, value in got.items():
                if key.startswith("revenue_cents_") or key == "attributed_orders":
                    attributed[key] += value
    funnel_row["revenue"], funnel_row["attributed_orders"] = attribution.revenue(attributed), attributed["attributed_orders"]
    # A/B branch steps run side by side: no drop-off between them, the step after compares with the one before
    branches = {n.removeprefix("VARIANT#").rpartition("#")[0] for n in sums if n.startswith("VARIANT#")}
    steps, previous = [], funnel_row["entered"]
    for name in names:
        step = {"step": name, **counts(f"STEP#{name}")}
        # (a step reached by more people than the one before it is on another branch: no drop-off)
        step["drop_off"] = (_pct(previous - step["entered"], previous)
                            if step["entered"] and previous and name not in branches and step["entered"] <= previous
                            else None)
        if step["entered"] and name not in branches:
            previous = step["entered"]
        steps.append(step)
    emails = [{"template": n.removeprefix("EMAIL#"), **counts(n)} for n in sorted(sums) if n.startswith("EMAIL#")]
    variants = []
    for n in sorted(sums):
        if n.startswith("VARIANT#"):
            step, _, variant = n.removeprefix("VARIANT#").rpartition("#")
            variants.append({"step": step, "variant": variant, **counts(n)})
    step_sums = {n.removeprefix("STEP#"): got for n, got in sums.items() if n.startswith("STEP#")}
    ab_tests = []
    for split in splits if splits is not None else abtest.splits(funnel):
        rule = split.get("winner") or {}
        test = abtest.compare(split, step_sums, rule.get("metric", "clicks"))
        won = winners.get(split["state"])
        test["winner"] = {"variant": won["variant"], "declared_at": won["declared_at"], "p": float(won["p"])} if won else None
        test["rule"] = rule or None
        ab_tests.append(test)
    return {"funnel": funnel, "from": start, "to": end, **funnel_row, "steps": steps, "emails": emails,
            "variants": variants, "ab_tests": ab_tests, "daily": [{"day": d, **daily[d]} for d in sorted(daily)]}


def funnel_report(funnel: str, start: str | None = None, end: str | None = None) -> dict | None:
    """Report for a shipped funnel, or None when no such funnel exists."""
    if funnel not in known_funnels(removed=True):
        return None
    start, end = day_range(start, end)
    return build(funnel, query_rows(funnel, start, end), start, end)


# ---------------------------------------------------------------- presentation
def _fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def table(report: dict) -> str:
    """Plain-text table of one funnel report, for the terminal and the README."""
    head = (f"funnel {report['funnel']}  {report['from']} .. {report['to']}  entered {report['entered']}, "
            f"converted {report['conversions']} ({_fmt_pct(report['conversion_rate'])}), "
            f"completed {report['completed']}, revenue {attribution.fmt(report['revenue'])}"
            + (f" ({report['attributed_orders']} orders)" if report["attributed_orders"] else ""))
    cols = ("step", "entered", "sent", "blocked", "open %", "mach.op", "click %", "mach.cl", "conv %", "unsub",
            "drop-off", "revenue")
    # sent: a step's emails or texts (open, click and conversion rates are of emails only)
    lines = [[s["step"], s["entered"], s["sent"] + s["sms_sent"], s["blocked"], _fmt_pct(s["open_rate"]),
              s["machine_opens"], _fmt_pct(s["click_rate"]), s["machine_clicks"], _fmt_pct(s["conversion_rate"]), s["unsubscribes"],
              _fmt_pct(s["drop_off"]), attribution.fmt(s["revenue"])] for s in report["steps"]]
    widths = [max(len(str(c)) for c in column) for column in zip(cols, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [head, "  " + fmt.format(*cols)] + ["  " + fmt.format(*map(str, line)) for line in lines]
    blocked = {}
    for s in report["steps"]:
        for reason, n in s["blocked_by_reason"].items():
            blocked[reason] = blocked.get(reason, 0) + n
    if blocked:
        out.append("  blocked: " + ", ".join(f"{r} {n}" for r, n in sorted(blocked.items())))
    deferred = {}
    for s in report["steps"]:
        for reason, n in s["deferred_by_reason"].items():
            deferred[reason] = deferred.get(reason, 0) + n
    if deferred:
        out.append("  deferred (sent later, or skipped past the funnel's limit: blocked above): "
                   + ", ".join(f"{r} {n}" for r, n in sorted(deferred.items())))
    texts = {k: sum(s[f"sms_{k}"] for s in report["steps"]) for k in ("sent", "delivered", "failed")}
    if any(texts.values()):
        out.append("  SMS: " + ", ".join(f"{k} {n}" for k, n in texts.items()))
    if report.get("refused_by_reason"):
        out.append("  refused: " + ", ".join(f"{r} {n}" for r, n in report["refused_by_reason"].items()))
    for v in report["variants"]:
        out.append(f"  A/B {v['step']} [{v['variant']}]: sent {v['sent']}, open {_fmt_pct(v['open_rate'])}, "
                   f"click {_fmt_pct(v['click_rate'])}, conv {_fmt_pct(v['conversion_rate'])}, "
                   f"revenue {attribution.fmt(v['revenue'])}")
    for t in report.get("ab_tests", []):
        out.append("  " + ab_line(t))
    return "\n".join(out)


def ab_line(test: dict) -> str:
    """'A/B split: b leads a on clicks (12.0% vs 4.0%, p = 0.031: significant at 5%); winner b since ...'."""
    lead, other = test["arms"][test["leader"]], test["arms"][test["runner_up"]]
    level = (test["rule"] or {}).get("p", 0.05)
    verdict = ("not enough data" if test["p"] is None else
               f"p = {test['p']:.3f}: {'significant' if test['p'] < level else 'not significant'} at {level:.0%}")
    line = (f"{test['state']}: {test['leader']} leads {test['runner_up']} on {test['metric']} "
            f"({_fmt_pct(lead['rate'])} of {lead['trials']} vs {_fmt_pct(other['rate'])} of {other['trials']}, {verdict})")
    if test["winner"]:
        w = test["winner"]
        line += f"; winner {w['variant']} since {w['declared_at'][:16].replace('T', ' ')} (p = {w['p']:.3f}): new entrants get it"
    elif test["rule"]:
        line += f"; automatic winner after {test['rule']['min_sends']} sends per arm at p < {level:g}"
    return line


def revenue_summary(reports: list[dict], unattributed: list[dict], window_days: float) -> str:
    """Revenue per funnel (the reports') and the orders no human click led to (the rows of the
    ``_unattributed`` counters over the same days), for the terminal."""
    totals: dict[str, int] = defaultdict(int)
    for row in unattributed:
        for key, value in row.items():
            if isinstance(value, int) and (key.startswith("revenue_cents_") or key == "orders"):
                totals[key] += value
    by_funnel = [f"{r['funnel']} {attribution.fmt(r['revenue'])} ({r['attributed_orders']})"
                 for r in sorted(reports, key=lambda r: -sum(r["revenue"].values())) if r["attributed_orders"]]
    orders = sum(r["attributed_orders"] for r in reports)
    return "\n".join([
        f"revenue by funnel (last human click within {window_days:g} days before the order; orders in brackets): "
        + (", ".join(by_funnel) or "none"),
        f"  attributed {orders} orders; unattributed (no human click in the window) "
        f"{attribution.fmt(attribution.revenue(totals))} ({totals['orders']} orders)"])


def _esc(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


_SERIES = (("entered", "#c7d2fe", "entered"), ("sent", "#818cf8", "sent"), ("human_opens", "#34d399", "opened"),
           ("human_clicks", "#f59e0b", "clicked"), ("conversions", "#ef4444", "converted"))
_LABEL_W, _BAR_W, _ROW_H = 250, 420, 34
CHART_WIDTH = _LABEL_W + _BAR_W + 200


def _headline(rep: dict) -> str:
    return (f"{rep['from']} .. {rep['to']}: {rep['entered']} entered, {rep['conversions']} converted "
            f"({_fmt_pct(rep['conversion_rate'])}), {rep['completed']} completed, "
            f"revenue {attribution.fmt(rep['revenue'])}")


def _funnel_svg(rep: dict) -> tuple[str, int] | None:
    """One funnel as an <svg> of overlaid bars per step, and its height; None if nobody entered."""
    steps = [s for s in rep["steps"] if s["entered"] or s["conversions"]]
    if not steps and not rep["entered"]:
        return None
    top = max([rep["entered"], 1] + [s["entered"] for s in steps])
    rows = [("Entered the funnel", {"entered": rep["entered"], "conversions": rep["conversions"]},
             f"entered {rep['entered']} · converted {rep['conversions']}")]
    for s in steps:
        note = (f"sent {s['sent']} · opened {s['human_opens']} ({_fmt_pct(s['open_rate'])}) · "
                f"clicked {s['human_clicks']} ({_fmt_pct(s['click_rate'])}) · converted {s['conversions']}")
        machine = s["machine_opens"] + s["machine_clicks"]
        if machine:
            note += f" · {machine} machine hits not counted"
        if s["sms_sent"]:
            note += f" · texted {s['sms_sent']} (delivered {s['sms_delivered']}, failed {s['sms_failed']})"
        if s["blocked"]:
            note += f" · blocked {s['blocked']}"
        if s["deferred"]:
            note += f" · deferred {s['deferred']}"
        if s["revenue"]:
            note += f" · revenue {attribution.fmt(s['revenue'])}"
        rows.append((s["step"], s, note))
    height = 16 + _ROW_H * len(rows)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_WIDTH}" height="{height}" '
             f'role="img" aria-label="funnel {_esc(rep["funnel"])}" font-family="system-ui,sans-serif">']
    for i, (name, data, note) in enumerate(rows):
        y = 8 + i * _ROW_H
        parts.append(f'<text x="0" y="{y + 15}" font-size="13">{_esc(name)}</text>')
        for key, colour, label in _SERIES:
            value = data.get(key, 0)
            if not value:
                continue
            w = max(2, round(_BAR_W * value / top))
            parts.append(f'<rect x="{_LABEL_W}" y="{y + 2}" width="{w}" height="18" fill="{colour}">'
                         f'<title>{_esc(label)}: {value}</title></rect>')
        parts.append(f'<text x="{_LABEL_W}" y="{y + 31}" font-size="10" fill="#444">{_esc(note)}</text>')
    parts.append("</svg>")
    return "".join(parts), height


def chart_svg(reports: list[dict], title: str = "funnelpilot funnels") -> str:
    """Every funnel's chart stacked in one standalone SVG (an image a README can show)."""
    parts, y = [f'<text x="0" y="22" font-size="18" font-weight="bold">{_esc(title)}</text>'], 30
    for i, (_, colour, label) in enumerate(_SERIES):
        parts.append(f'<rect x="{i * 110}" y="{y}" width="14" height="14" fill="{colour}"/>'
                     f'<text x="{i * 110 + 20}" y="{y + 12}" font-size="12">{_esc(label)}</text>')
    y += 30
    for rep in reports:
        drawn = _funnel_svg(rep)
        if drawn is None:
            continue
        svg, height = drawn
        parts.append(f'<text x="0" y="{y + 16}" font-size="15" font-weight="bold">{_esc(rep["funnel"])}</text>'
                     f'<text x="140" y="{y + 16}" font-size="11" fill="#444">{_esc(_headline(rep))}</text>')
        parts.append(svg.replace("<svg ", f'<svg x="0" y="{y + 22}" ', 1))
        y += 22 + height + 10
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_WIDTH}" height="{y}" '
            f'font-family="system-ui,sans-serif"><rect width="100%" height="100%" fill="#fff"/>'
            + "".join(parts) + "</svg>\n")


def revenue_svg(reports: list[dict]) -> str:
    """A section with one bar per funnel and currency: the revenue its emails brought."""
    bars = [(rep["funnel"], currency, amount) for rep in reports for currency, amount in rep["revenue"].items()]
    bars.sort(key=lambda b: (b[1], -b[2]))
    top = {c: max(a for _, cc, a in bars if cc == c) for _, c, _ in bars}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_WIDTH}" height="{8 + 24 * len(bars)}" '
             'role="img" aria-label="revenue by funnel" font-family="system-ui,sans-serif">']
    for i, (funnel, currency, amount) in enumerate(bars):
        y, w = 4 + 24 * i, max(2, round(_BAR_W * amount / top[currency]))
        parts.append(f'<text x="0" y="{y + 14}" font-size="13">{_esc(funnel)}</text>'
                     f'<rect x="{_LABEL_W}" y="{y}" width="{w}" height="18" fill="#10b981"><title>{_esc(funnel)}: '
                     f'{amount:,.2f} {currency}</title></rect><text x="{_LABEL_W + w + 6}" y="{y + 14}" font-size="12">'
                     f'{amount:,.2f} {_esc(currency)}</text>')
    return ("<section><h2>Revenue by funnel</h2><p>Orders credited to the funnel of the buyer's last human click "
            "before the order (the attribution window of infra/steering.yaml).</p>" + "".join(parts) + "</svg></section>")


def chart_html(reports: list[dict], title: str = "funnelpilot funnels") -> str:
    """A self-contained HTML page (inline SVG, no scripts): one funnel chart per report. Each
    step is one row of overlaid bars - entered, sent, opened and clicked by people, converted -
    so the narrowing reads at a glance; machine opens and clicks are named, never drawn."""
    sections = [revenue_svg(reports)] if any(rep["revenue"] for rep in reports) else []
    for rep in reports:
        head = f"<h2>{_esc(rep['funnel'])}</h2><p>{_esc(_headline(rep))}</p>"
        drawn = _funnel_svg(rep)
        body = drawn[0] if drawn else "<p><em>No contact entered this funnel in the period.</em></p>"
        body += "".join(f"<p>{_esc(ab_line(t))}</p>" for t in rep.get("ab_tests", []))
        sections.append(f"<section>{head}{body}</section>")
    legend = " ".join(f'<span style="background:{c};padding:0 .7em;margin:0 .3em 0 .8em"></span>{_esc(label)}'
                      for _, c, label in _SERIES)
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_esc(title)}</title><style>body{{font-family:system-ui,sans-serif;margin:2em;color:#111;"
            "max-width:60em}section{margin-bottom:1.6em}h2{margin:.2em 0}p{margin:.3em 0}</style></head><body>"
            f"<h1>{_esc(title)}</h1><p>{legend}</p><p>Bars overlap: each step shows how many contacts entered "
            "it, were sent the email, opened it, clicked and converted. Opens and clicks are unique people per "
            "email; Apple Mail Privacy Protection prefetches and security-scanner clicks are machine hits, "
            "excluded from the bars and the rates.</p>" + "".join(sections) + "</body></html>\n")
