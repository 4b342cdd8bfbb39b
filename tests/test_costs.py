"""The cost model (funnelpilot_local.costs) and `funnelpilot cost`: every billed resource of
template.yaml priced, fixed costs at the floor by default, a steady state that does not depend
on the demo's window, measured counts from a real run, and clear CLI errors."""
import json
from pathlib import Path

import pytest

from funnelpilot_local import cli, costs, demo
from funnelpilot_local.template import Template

ROOT = costs.ROOT
DAY = costs.DAY
START = demo.START
# A person's life as the funnels shape it: days after signup an email is sent (welcome,
# delivery, segmentation in the first month), then one every 15 days, at a phase of its own
# (people enter the recurring funnels at different times: the list's rate is steady).
FIRST_MONTH = [0, 0, 2, 3, 5, 7]


def life(phase: float) -> list[float]:
    return FIRST_MONTH + [30 + phase + 15 * k for k in range(30)]


def lifecycle_usage(days: int, contacts: int = 400) -> dict:
    """A usage as Meter.usage reports it, for an audience that signs up over the first half of the
    window (as the demo's) and lives LIFE; every email costs the same work (per-email counts)."""
    meter = costs.Meter(rt=None)
    end = START + days * DAY
    for i in range(contacts):
        at = START + (i + 0.5) / contacts * days * 0.5 * DAY
        address = f"reader{i}@example.com"
        meter.signups[address] = at
        meter.sends += [(at + age * DAY, address) for age in life(i * 0.618034 % 1 * 15) if at + age * DAY < end]
    emails = meter.email_ages(end)
    sent = emails["to_contacts"]
    per_email = {"lambda_requests": 10, "lambda_gb_seconds": 0.25, "stepfunctions_transitions": 3.5,
                 "dynamodb_wru": 30, "dynamodb_rru": 7, "eventbridge_events": 5, "ses_emails": 1.02,
                 "http_requests": 1, "ssm_reads": 0.01, "secrets_calls": 0, "scheduler_invocations": 0.01,
                 "sqs_requests": 0, "sms_message_parts": 0.01, "log_bytes": 6000, "emf_bytes": 600}
    return {"version": costs.USAGE_VERSION, "contacts": contacts, "days": days, "emails": emails,
            "totals": {k: v * sent for k, v in per_email.items()},
            "stored_bytes": {"ContactsTable": 12_000 * contacts, "MetricsTable": 2_000 * contacts},
            "emf_metrics": ["EmailsSent", "HumanOpens", "MachineOpens"], "invocations": {}, "functions": {},
            "broadcast_emails": 0}


def with_broadcast(usage: dict, emails: int) -> dict:
    """The usage plus one broadcast of ``emails`` emails: its own functions' work (2 WRU, 0.1 Lambda
    requests, 1 SES email per email) and what followed it (feedback: 1 request, 2 WRU per email)."""
    machinery = {"dynamodb_wru": 2 * emails, "lambda_requests": 0.1 * emails, "ses_emails": emails}
    feedback = {"dynamodb_wru": 2.0 * (usage["emails"]["to_contacts"] + emails),
                "lambda_requests": usage["emails"]["to_contacts"] + emails}
    totals = dict(usage["totals"])
    for part in (machinery, feedback):
        for k, v in part.items():
            totals[k] += v
    return {**usage, "totals": totals, "broadcast_emails": emails,
            "functions": {"BroadcastSendFunction": machinery, "SesFeedbackFunction": feedback}}


def line(est: dict, prefix: str) -> dict:
    [found] = [x for x in est["lines"] if x["item"].startswith(prefix)]
    return found


# ---------------------------------------------------------------- the template's billed lines
def test_every_resource_type_of_the_template_is_priced_or_listed_free(tmp_path):
    t = Template.load(ROOT)
    assert costs.unpriced(t) == set()
    text = (ROOT / "template.yaml").read_text().replace(
        "Resources:\n", "Resources:\n  Clicks:\n    Type: AWS::Kinesis::Stream\n    Properties: { ShardCount: 1 }\n", 1)
    (tmp_path / "template.yaml").write_text(text)
    grown = Template.load(ROOT, path=tmp_path / "template.yaml")
    assert costs.unpriced(grown) == {"AWS::Kinesis::Stream"}
    with pytest.raises(ValueError, match="does not price: AWS::Kinesis::Stream"):
        costs.estimate(lifecycle_usage(60), 1000, template=grown)


def test_fixed_costs_by_default_are_the_three_alarms_and_nothing_optional():
    est = costs.estimate(lifecycle_usage(60), 1)  # one contact: what remains is the fixed part
    assert est["aws"] <= 0.50
    assert line(est, "CloudWatch alarms")["cost"] == pytest.approx(0.30)  # DLQ depth, bounce rate, complaint rate
    for item in ("CloudWatch dashboard", "CloudWatch custom metrics", "X-Ray", "KMS customer", "Secrets Manager secrets"):
        assert line(est, item)["cost"] == 0, item
    assert "AWS owned key" in line(est, "KMS requests")["note"]
    assert "off (Tracing=Active" in line(est, "X-Ray")["note"]


def test_optional_lines_follow_the_template_parameters():
    usage = lifecycle_usage(60)
    default = costs.estimate(usage, 10_000)
    on = costs.estimate(usage, 10_000, template=Template.load(
        ROOT, {"Tracing": "Active", "CustomMetrics": "true", "CreateDashboard": "true"}))
    assert line(on, "CloudWatch dashboard")["cost"] == 3.00
    assert line(on, "CloudWatch custom metrics")["quantity"] == len(usage["emf_metrics"])
    assert line(on, "X-Ray")["quantity"] == pytest.approx(line(on, "Lambda requests")["quantity"])  # under 1/s
    assert line(on, "CloudWatch Logs ingestion")["quantity"] > line(default, "CloudWatch Logs ingestion")["quantity"]
    assert on["aws"] - default["aws"] > 3.00 + 0.30 * 3


def test_log_storage_follows_the_retention():
    usage = lifecycle_usage(60)
    month = costs.estimate(usage, 10_000)
    year = costs.estimate(usage, 10_000, template=Template.load(ROOT, {"LogRetentionDays": "365"}))
    assert line(year, "CloudWatch Logs storage")["quantity"] == pytest.approx(
        line(month, "CloudWatch Logs storage")["quantity"] * 365 / 30)


# ---------------------------------------------------------------- steady state
def test_steady_state_per_contact_does_not_depend_on_the_window():
    short, long = lifecycle_usage(60), lifecycle_usage(90)
    a, b = (costs.estimate(u, 10_000) for u in (short, long))
    assert a["emails_per_contact"] == pytest.approx(b["emails_per_contact"], rel=0.05)
    assert a["aws"] == pytest.approx(b["aws"], rel=0.05) and a["total"] == pytest.approx(b["total"], rel=0.05)
    # first month: exactly the six emails of FIRST_MONTH; the second month two
    assert a["first_month"] == b["first_month"] == 6
    assert a["after_first_month"] == pytest.approx(2, rel=0.1) and b["after_first_month"] == pytest.approx(2, rel=0.1)
    # what the old model did (emails / contacts / window) moves with the window
    naive = [u["emails"]["to_contacts"] / u["contacts"] / u["days"] * 30 for u in (short, long)]
    assert abs(naive[0] - naive[1]) / naive[1] > 0.2


def test_broadcasts_are_costed_apart_from_the_funnels():
    """A measured broadcast's own work is not a funnel email's; each broadcast a month adds its emails (to the
    share of the list the measured one reached) at its own work plus what follows any email."""
    plain = lifecycle_usage(60)
    measured = with_broadcast(plain, emails=300)  # 300 of the 400 contacts: a reach of 75%
    base, none, four = costs.estimate(plain, 10_000), costs.estimate(measured, 10_000), costs.estimate(measured, 10_000, broadcasts=4)
    assert none["emails"] == base["emails"] and none["broadcast_emails"] == 0
    sent = plain["emails"]["to_contacts"]
    feedback_per_email = 2.0 * (sent + 300) / (sent + 300)
    assert line(none, "DynamoDB writes")["quantity"] == pytest.approx(line(base, "DynamoDB writes")["quantity"]
                                                                      + feedback_per_email * none["emails"])
    assert four["broadcast_emails"] == pytest.approx(4 * 0.75 * 10_000)
    assert four["emails"] == pytest.approx(none["emails"] + 30_000)
    assert line(four, "DynamoDB writes")["quantity"] == pytest.approx(line(none, "DynamoDB writes")["quantity"]
                                                                      + 30_000 * (2 + feedback_per_email))
    assert four["ses"]["quantity"] == pytest.approx(none["ses"]["quantity"] + 30_000)
    assert "4 broadcasts a month, each to 75% of the list as measured: 30,000 emails" in costs.format_estimate(four)
    with pytest.raises(ValueError, match="sent no broadcast"):
        costs.estimate(plain, 10_000, broadcasts=1)


def test_a_window_too_short_for_a_steady_state_is_refused():
    with pytest.raises(ValueError, match="observes no contact for more than a month"):
        costs.estimate(lifecycle_usage(20), 1000)


def test_a_real_run_is_metered_per_email(tmp_path, capsys):
    usage = demo.simulate(seed=7, contacts=3, days=35, state_dir=tmp_path / "run", broadcast=True)["usage"]  # one observed 34 days
    assert capsys.readouterr().out == ""  # the functions' INFO logs were counted, not printed
    e, totals = usage["emails"], usage["totals"]
    assert 0 < e["to_contacts"] <= totals["ses_emails"]
    assert sorted(round(seen) for seen, _ in e["contacts"]) == [24, 25, 34]  # signed up on days 11.2, 9.7, 0.7
    assert all(ages and ages[0] < 0.1 for _, ages in e["contacts"])  # the welcome email at signup
    assert totals["log_bytes"] > costs.PLATFORM_LOG_BYTES * totals["lambda_requests"]  # INFO lines too
    assert totals["ssm_reads"] >= 1  # the signing key (SSM SecureString), once per cold start
    assert "EmailsSent" in usage["emf_metrics"]  # what CustomMetrics=true would emit
    assert usage["stored_bytes"]["ContactsTable"] > 0 and usage["stored_bytes"]["MetricsTable"] > 0
    est = costs.estimate(usage, 1000)
    assert est["ses"]["quantity"] >= est["emails"]  # SES also sends confirmations and alerts
    # the broadcast's emails are counted apart from the funnels' (which set the steady state), its work too
    b = usage["functions"]["BroadcastSendFunction"]
    assert usage["broadcast_emails"] >= 1 and b["ses_emails"] == usage["broadcast_emails"]
    assert e["to_contacts"] == sum(len(ages) for _, ages in e["contacts"])
    assert totals["ses_emails"] >= e["to_contacts"] + usage["broadcast_emails"]
    assert costs.estimate(usage, 1000, broadcasts=2)["broadcast_emails"] == pytest.approx(
        2 * usage["broadcast_emails"] / 3 * 1000)


# ---------------------------------------------------------------- CLI
@pytest.fixture
def usage_file(tmp_path) -> Path:
    path = tmp_path / "usage.json"
    path.write_text(json.dumps(lifecycle_usage(60)))
    return path


def test_cost_cli_prints_every_line_for_each_list_size(usage_file, capsys):
    assert cli.main(["cost", "--usage", str(usage_file)]) == 0
    blocks = capsys.readouterr().out.split("monthly cost for ")[1:]
    assert [b.split(" ", 1)[0] for b in blocks] == ["1,000", "10,000", "100,000", "1,000,000"]
    for block in blocks:
        for text in ("AWS total without SES", "SES emails", "CloudWatch alarms (3)", "CloudWatch dashboard (0)",
                     "CloudWatch custom metrics (0)", "X-Ray traces", "CloudWatch Logs storage (30 days)",
                     "KMS requests", "DynamoDB point-in-time recovery", "EventBridge Scheduler", "Mailchimp Standard",
                     "Kit Creator", "ActiveCampaign", "HubSpot Marketing Hub Professional", "Brevo (Starter/Business)",
                     "read 2026-12-01", "10% of the list in its first month"):
            assert text in block, text


def test_cost_cli_one_list_size(usage_file, capsys):
    assert cli.main(["cost", "--usage", str(usage_file), "--contacts", "10,000"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("monthly cost for 10,000 contacts") and out.count("monthly cost for") == 1


@pytest.mark.parametrize("value", ["-5", "0", "ten", "1e3", "2.5"])
def test_cost_cli_refuses_a_bad_contact_count_in_one_line(usage_file, capsys, value):
    assert cli.main(["cost", "--usage", str(usage_file), "--contacts", value]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "--contacts must be a whole number" in captured.err and value in captured.err


def test_cost_cli_refuses_a_bad_share(usage_file, capsys):
    assert cli.main(["cost", "--usage", str(usage_file), "--new-per-month", "2"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("value", ["-1", "many", "nan", "500"])
def test_cost_cli_refuses_a_bad_broadcast_count(usage_file, capsys, value):
    assert cli.main(["cost", "--usage", str(usage_file), "--broadcasts", value]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "--broadcasts must be" in captured.err
