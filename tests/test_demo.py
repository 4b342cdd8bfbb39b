"""The demo: a simulated audience through the real handlers, deterministic for a seed; report CLI (cost: test_costs)."""
import json

from funnelpilot_local import cli
from funnelpilot_local import demo


def test_same_seed_same_report_and_the_audience_acts_through_real_routes(tmp_path):
    first = demo.simulate(seed=3, contacts=14, days=12, state_dir=tmp_path / "a", broadcast=True)
    second = demo.simulate(seed=3, contacts=14, days=12, state_dir=tmp_path / "b", broadcast=True)
    assert first["errors"] == [] and second["errors"] == []
    assert first["reports"] == second["reports"]
    assert first["tally"] == second["tally"]
    tally = first["tally"]
    assert tally["signups"] == 14 and tally["emails"] >= 14
    assert tally["mpp"] > 0  # Apple Mail users' prefetches happened...
    steps = [step for rep in first["reports"] for step in rep["steps"]]
    assert sum(s["machine_opens"] for s in steps) >= tally["mpp"]  # ...and were counted as machine opens,
    assert sum(s["human_opens"] for s in steps) <= tally["opens"]  # never as human ones
    assert {r["funnel"] for r in first["reports"] if r["entered"]} >= {"welcome", "delivery"}
    assert len(list(first["outbox"].glob("*.eml"))) == tally["emails"]
    bid, newsletter = first["broadcast"]  # the example broadcast, sent on the middle day (README "Broadcasts")
    assert bid == "december-news" and newsletter["status"] == "sent" and newsletter["sent"] > 0
    assert newsletter["sent"] + newsletter["skipped"] + sum(newsletter["blocked"].values()) == newsletter["audience"]
    assert set(newsletter["variants"]) == {"a", "b"} and newsletter["winner"] in ("a", "b")
    assert first["broadcast"] == second["broadcast"]


def test_report_cli_reads_the_demo_snapshot(tmp_path, capsys):
    snapshot = tmp_path / "metrics.json"
    snapshot.write_text(json.dumps({"start": "2026-03-02", "end": "2026-03-03", "rows": {"welcome": [
        {"pk": "FUNNEL#welcome", "sk": "DAY#2026-03-02#STEP#Send welcome-1", "sent": 4, "entered": 4,
         "human_opens": 2, "machine_opens": 3},
        {"pk": "FUNNEL#welcome", "sk": "DAY#2026-03-05#STEP#Send welcome-1", "sent": 9, "entered": 9}]}}))
    chart = tmp_path / "chart.html"
    assert cli.main(["report", "--funnel", "welcome", "--snapshot", str(snapshot), "--chart", str(chart)]) == 0
    out = capsys.readouterr().out
    assert "Send welcome-1" in out and "50.0%" in out  # 2 human opens of 4 sent; the 5 March row is out of range
    assert "<svg" in chart.read_text() and "Send welcome-1" in (tmp_path / "chart.svg").read_text()


def test_report_cli_queries_a_deployed_stacks_metrics_table(tmp_path, capsys, monkeypatch):
    """--stack: the table name comes from CloudFormation (stubbed: moto's CloudFormation needs
    extras we do not install), the counters from a Query on that table."""
    import boto3
    from botocore.stub import Stubber
    from moto import mock_aws

    from funnelpilot import aws, metrics
    from funnelpilot.config import config

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    table = "fp-prod-MetricsTable-1X2Y"
    real_client = boto3.client

    def client(service, **kwargs):
        made = real_client(service, **kwargs)
        if service == "cloudformation":
            stub = Stubber(made)
            stub.add_response("describe_stack_resource", {"StackResourceDetail": {
                "LogicalResourceId": "MetricsTable", "PhysicalResourceId": table, "ResourceType": "AWS::DynamoDB::Table",
                "LastUpdatedTimestamp": "2026-05-01T00:00:00Z", "ResourceStatus": "CREATE_COMPLETE"}},
                {"StackName": "fp-prod", "LogicalResourceId": "MetricsTable"})
            stub.activate()
        return made

    monkeypatch.setattr(boto3, "client", client)
    try:
        with mock_aws():
            real_client("dynamodb", region_name="eu-west-1").create_table(
                TableName=table, BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                      {"AttributeName": "sk", "AttributeType": "S"}],
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}])
            monkeypatch.setenv("AWS_REGION", "eu-west-1")
            monkeypatch.setenv("METRICS_TABLE_NAME", table)
            config.cache_clear(), aws.client.cache_clear()
            metrics.count("welcome", "Send welcome-1", {"sent": 10, "entered": 10, "human_opens": 4}, day="2026-05-04")
            monkeypatch.setenv("METRICS_TABLE_NAME", "not-this-one")  # the CLI must find the table itself
            config.cache_clear()
            code = cli.main(["report", "--stack", "fp-prod", "--region", "eu-west-1", "--funnel", "welcome",
                             "--from", "2026-05-01", "--to", "2026-05-31", "--chart", str(tmp_path / "c.html")])
    finally:
        config.cache_clear(), aws.client.cache_clear()
    assert code == 0
    out = capsys.readouterr().out
    assert "Send welcome-1" in out and "40.0%" in out
