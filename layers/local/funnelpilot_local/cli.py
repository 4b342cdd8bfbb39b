"""``funnelpilot`` command line: demo, serve (local runtime), funnels (compiler), openapi, report, cost, bulk,
contacts, broadcast, preview and send-test (one email as it would be sent), doctor."""
import argparse
import errno
import json
import os
import sys
from pathlib import Path

LOCAL = Path(".local")
EXAMPLES = {  # shown at the end of each command's --help
    "demo": "funnelpilot demo --contacts 30 --days 14",
    "serve": "funnelpilot serve --port 3000 --speed 3600",
    "funnels": "funnelpilot funnels --plan --stack my-funnelpilot",
    "openapi": "funnelpilot openapi",
    "bulk": "funnelpilot bulk --stack my-funnelpilot --segment hot-leads --tag webinar --wait",
    "report": "funnelpilot report --funnel welcome --from 2026-01-01 --to 2026-01-31",
    "cost": "funnelpilot cost --contacts 10000",
    "contacts": "funnelpilot contacts import members.csv; funnelpilot contacts show ann@example.com",
    "preview": "funnelpilot preview welcome-1 --contact ann@example.com",
    "send-test": "funnelpilot send-test welcome-1 --to you@example.com --stack my-funnelpilot",
    "doctor": "funnelpilot doctor --stack funnelpilot --region eu-west-1",
}


class UserError(Exception):
    """A mistake of the user's (a bad option value, a busy port): one line on stderr, exit code 2."""


def main(argv: list[str] | None = None) -> int:
    """The entry point: a user's mistake — a bad option value, no AWS credentials, a stack that does
    not exist, a busy port — is one line on stderr and exit code 2, never a traceback."""
    try:
        return _main(argv)
    except Exception as exc:  # noqa: BLE001 - classified here, anything else is re-raised
        line = user_error(exc)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2


def user_error(exc: Exception) -> str | None:
    """The one line that explains a user's mistake, or None for a bug (a traceback is then right)."""
    from botocore.exceptions import ClientError, NoCredentialsError, NoRegionError, PartialCredentialsError

    from funnelpilot.errors import InvalidField

    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, InvalidField):
        return f"--{exc.field.replace('_', '-')}: {exc.message}"
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return ("no AWS credentials found: run `aws configure` or set AWS_PROFILE (or leave out --stack to use the "
                "local runtime)")
    if isinstance(exc, NoRegionError):
        return "no AWS region: pass --region, or set AWS_REGION or a region in `aws configure`"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"AWS refused {exc.operation_name}: {error.get('Code')}: {error.get('Message')}"
    return None


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="funnelpilot", description="funnelpilot local tools")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="simulate an audience through every shipped funnel and report")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--contacts", type=int, default=200, help="simulated audience size (default 200)")
    demo.add_argument("--days", type=int, default=60, help="simulated days (default 60)")
    serve = sub.add_parser("serve", help="serve the HTTP API and a landing page on 127.0.0.1")
    serve.add_argument("--port", type=int, default=3000)
    serve.add_argument("--speed", default="1", help="simulated seconds per real second (default 1: real time; "
                       "86400: a day a second)")
    serve.add_argument("--fresh", action="store_true", help="forget the state kept in .local/ and start over")
    funnels = sub.add_parser("funnels", help="check every email template in use, compile infra/funnels/*.yaml to state "
                             "machines and template.yaml, draw infra/diagrams")
    funnels.add_argument("--check", action="store_true",
                         help="change nothing; exit 1 if anything is out of date (2: a mistake in a funnel or template)")
    funnels.add_argument("--root", type=Path, help="project directory (default: this checkout)")
    funnels.add_argument("--plan", action="store_true",
                         help="say what changes for the people inside each funnel, per state; write nothing")
    funnels.add_argument("--stack", help="compare with this deployed stack's state machines and count who is in each "
                                         "state; a removed funnel nobody is inside is then removed (AWS credentials)")
    funnels.add_argument("--region", help="AWS region of the stack (default: your AWS configuration's)")
    funnels.add_argument("--force", action="append", default=[], metavar="FUNNEL",
                         help="remove a removed funnel's state machine now instead of letting it drain")
    oas = sub.add_parser("openapi", help="write the HTTP API's OpenAPI document (infra/openapi.json) from template.yaml")
    oas.add_argument("--check", action="store_true", help="change nothing; exit 1 if the file is out of date")
    oas.add_argument("--root", type=Path, help="project directory (default: this checkout)")
    bulk = sub.add_parser("bulk", help="start (or resume) a bulk action over a segment (Step Functions)")
    machine = bulk.add_mutually_exclusive_group(required=True)
    machine.add_argument("--stack", help="deployed stack name (reads its BulkStateMachineArn output)")
    machine.add_argument("--state-machine-arn")
    bulk.add_argument("--segment", required=True)
    action = bulk.add_mutually_exclusive_group(required=True)
    action.add_argument("--tag")
    action.add_argument("--untag")
    action.add_argument("--set", nargs="+", metavar="NAME=VALUE", help="set properties")
    action.add_argument("--funnel", help="hand each member to this funnel (funnel.handoff)")
    bulk.add_argument("--run-id", help="resume this run: members already done are skipped")
    bulk.add_argument("--wait", action="store_true", help="wait and print the report")
    rep = sub.add_parser("report", help="per-funnel, per-step report and an HTML/SVG funnel chart")
    rep.add_argument("--funnel", action="append", help="funnel id (repeatable; default: every shipped funnel)")
    rep.add_argument("--from", dest="start", help="first day, YYYY-MM-DD")
    rep.add_argument("--to", dest="end", help="last day, YYYY-MM-DD")
    rep.add_argument("--stack", help="a deployed stack's name: read its MetricsTable (needs AWS credentials)")
    rep.add_argument("--region", help="AWS region of the stack (default: your AWS configuration's)")
    rep.add_argument("--snapshot", type=Path, default=LOCAL / "metrics.json",
                     help="local counters saved by the last demo run (default .local/metrics.json)")
    rep.add_argument("--chart", type=Path, default=LOCAL / "funnels.html",
                     help="where to write the chart page (an .svg image of it goes beside)")
    rep.add_argument("--json", action="store_true", help="print the reports as JSON")
    cost = sub.add_parser("cost", help="monthly AWS cost of the stack at steady state, next to SES and the peers")
    cost.add_argument("--contacts", help="list size (default: 1,000, 10,000, 100,000 and 1,000,000)")
    cost.add_argument("--new-per-month", default="0.1",
                      help="share of the list in its first month at steady state (default 0.1)")
    cost.add_argument("--broadcasts", default="0",
                      help="broadcasts (newsletters) a month, each to the share of the list the demo's reached (default 0)")
    cost.add_argument("--usage", type=Path, default=LOCAL / "usage.json",
                      help="operations measured by a demo run (default .local/usage.json; measured now if absent)")
    preview = sub.add_parser("preview", help="an email as it would be sent (.html, .txt, .eml) and what spam filters see")
    preview.add_argument("template", help="an email a funnel sends, or confirm, sales-alert")
    who = preview.add_mutually_exclusive_group()
    who.add_argument("--contact", metavar="EMAIL", help="a real person: of the local table, or of --stack")
    who.add_argument("--sample", action="store_true", help="the sample contact Ada (the default)")
    preview.add_argument("--out", type=Path, default=LOCAL / "preview", help="where to write (default .local/preview)")
    test = sub.add_parser("send-test", help="send an email untracked, [TEST] in the subject: to the outbox, or via SES")
    test.add_argument("template", help="an email a funnel sends, or confirm, sales-alert")
    test.add_argument("--to", required=True, metavar="ADDRESS")
    test.add_argument("--contact", metavar="EMAIL", help="render it for this person (default: the sample contact)")
    for command in (preview, test):
        command.add_argument("--stack", help="a deployed stack: its settings (and --contact: its people), your credentials")
        command.add_argument("--region", help="AWS region of the stack (default: your AWS configuration's)")
    doctor = sub.add_parser("doctor", help="check a deployed stack (--stack) or this machine, one line per check")
    doctor.add_argument("--stack", help="a deployed stack's name (needs AWS credentials; read-only calls)")
    doctor.add_argument("--region", help="AWS region of the stack (default: your AWS configuration's)")
    contacts = sub.add_parser("contacts", help="find, export, erase and change people by email; export lists")
    contacts_sub = contacts.add_subparsers(dest="contacts_command", required=True)
    from funnelpilot_local import audience_cli

    audience_cli.register(contacts_sub)
    from funnelpilot_local import contacts_cli

    contacts_cli.register(contacts_sub)
    from funnelpilot_local import broadcast_cli

    broadcast_cli.register(sub)
    for name, command in sub.choices.items():
        if name in EXAMPLES:
            command.epilog, command.formatter_class = f"example:\n  {EXAMPLES[name]}", argparse.RawDescriptionHelpFormatter
    args = parser.parse_args(argv)
    if args.command == "contacts":
        return args.contacts_run(args)
    if args.command == "broadcast":
        return args.broadcast_run(args)
    if args.command == "bulk":
        return bulk_command(args)
    if args.command == "demo":
        from funnelpilot_local import demo as demo_mod

        return demo_mod.run(seed=args.seed, contacts=args.contacts, days=args.days)
    if args.command == "serve":
        from funnelpilot_local.server import serve as serve_fn

        try:
            speed = float(args.speed)
        except ValueError:
            speed = 0.0
        if not 0 < speed < float("inf"):
            raise UserError(f"--speed {args.speed}: a positive number of simulated seconds per real second (1 = real "
                            "time, 86400 = a day a second)")
        try:
            serve_fn(port=args.port, speed=speed, fresh=args.fresh)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise UserError(f"--port {args.port}: the port is in use (another `funnelpilot serve`?): stop it or "
                            "pass another --port") from None
        return 0
    if args.command == "funnels":
        return funnels_command(args)
    if args.command in ("preview", "send-test"):
        return preview_command(args)
    if args.command == "openapi":
        return openapi_command(args)
    if args.command == "report":
        return report_command(args)
    if args.command == "cost":
        return cost_command(args)
    if args.command == "doctor":
        return doctor_command(args)
    return 2


def sync_generated(root: Path, target: str, expected: dict[Path, str], stale: list[Path], check: bool) -> int:
    """Write the files a `make <target>` generates (or, with ``check``, only say which are out of
    date: exit 1), removing ``stale`` ones."""
    changed = [p for p, text in expected.items() if not p.exists() or p.read_text() != text] + stale
    said = set()
    for path in changed:
        shown = _shown(path.relative_to(root))
        if shown not in said:
            said.add(shown)
            print(f"{'out of date' if check else 'removed' if path in stale else 'wrote'}: {shown}")
        if not check:
            if path in stale:
                path.unlink()
                for folder in path.parents:  # a content version's folders, once empty
                    if "versions" not in folder.relative_to(root).parts[:-1] or any(folder.iterdir()):
                        break
                    folder.rmdir()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(expected[path])
    if not changed:
        print(f"{target}: everything up to date")
    elif check:
        print(f"run `make {target}` to regenerate", file=sys.stderr)
        return 1
    return 0


def _shown(path: Path) -> Path:
    """A content version's copies are said once, by their folder."""
    return path.parent if path.parent.parent.name == "versions" else path


def funnels_command(args) -> int:
    from funnelpilot_local import compiler, diagrams
    from funnelpilot.channels.webhooks import WebhookError
    from funnelpilot.funnel_spec import FunnelError
    from funnelpilot_local.runtime import ROOT

    root = args.root or ROOT
    deployed = None
    if args.stack:
        import boto3

        from funnelpilot_local import plan

        region = args.region or boto3.session.Session().region_name or "us-east-1"
        deployed = plan.machine_state(boto3.client("stepfunctions", region_name=region),
                                      plan.stack_machines(args.stack, region))
    try:
        forced = _forced(root, args.force)
        running = plan.running(deployed) if deployed is not None else None
        expected = compiler.build(root, forced, running)
        draining = compiler.draining(root, forced, running)
    except (FunnelError, WebhookError, compiler.CompileError) as exc:  # funnels', templates', webhooks' mistakes: nothing written
        print(f"funnels: not compiled, fix these first:\n{str(exc).replace(f'{root}/', '')}", file=sys.stderr)
        return 2
    if args.plan:
        from funnelpilot_local import plan

        print(plan.report(root, expected, draining, deployed))
        return 0
    stale = compiler.stale_machines(root, expected) + diagrams.stale(root, expected)
    if deployed is not None:  # the stack says which old content versions a journey may still send
        stale += compiler.stale_versions(root, expected, plan.needed(deployed))
    status = sync_generated(root, "funnels", expected, stale, args.check)
    for fid, why in draining.items():
        inside = f"{running.get(fid, 0)} journeys" if running is not None else "journeys"
        print(f"draining: {fid} ({why}): takes nobody in; {inside} inside finish on the definition they started on"
              + (f" (`funnelpilot funnels --force {fid}` removes it now)" if why.startswith("its file") else ""))
    for fid in forced:
        inside = f"{running.get(fid, 0)} journeys" if running is not None else "every journey"
        print(f"removed: {fid} (--force): the next deploy deletes its state machine and stops {inside} still inside "
              "at their next transition")
    machines = {p.name.removesuffix(".asl.json"): json.loads(text) for p, text in expected.items()
                if p.name.endswith(".asl.json")}
    print(compiler.path_table(machines))
    return status


def _forced(root: Path, names: list[str]) -> set[str]:
    """--force names a funnel whose file was removed and that still has a compiled state machine."""
    for fid in names:
        if (root / "infra" / "funnels" / f"{fid}.yaml").exists():
            raise UserError(f"--force {fid}: infra/funnels/{fid}.yaml still exists: remove the file, then force")
        if not (root / "infra" / "statemachines" / f"{fid}.asl.json").exists():
            raise UserError(f"--force {fid}: no compiled funnel of that name")
    return set(names)


def preview_command(args) -> int:
    from funnelpilot_local import preview
    from funnelpilot_local.runtime import ROOT

    if args.command == "send-test":
        where = preview.send_test(ROOT, args.template, args.to, contact_email=args.contact, stack=args.stack,
                                  region=args.region, state_dir=LOCAL)
        print(f"sent {args.template} to {args.to} (untracked, [TEST] subject): {where}")
        return 0
    raw, facts = preview.build(ROOT, args.template, contact_email=args.contact, stack=args.stack, region=args.region,
                               state_dir=LOCAL)
    for path in preview.write(args.out, args.template, raw, facts):
        print(f"wrote: {path}")
    print(preview.report(facts))
    return 0


def openapi_command(args) -> int:
    from funnelpilot_local import openapi
    from funnelpilot_local.runtime import ROOT

    root = args.root or ROOT
    return sync_generated(root, "openapi", {root / openapi.PATH: openapi.render(root)}, [], args.check)


def report_command(args) -> int:
    from funnelpilot import report, steering
    from funnelpilot.steering import abtest, attribution
    from funnelpilot_local.runtime import ROOT

    report.day_range(args.start, args.end)  # a bad --from/--to is refused before anything is read
    content = ROOT / "infra"
    known = report.known_funnels(content, removed=True)
    if unknown := [f for f in args.funnel or [] if f not in known]:
        raise UserError(f"--funnel {unknown[0]!r}: no such funnel (funnels: {', '.join(known)})")
    funnels = args.funnel or known
    if args.stack:
        import boto3

        region = args.region or boto3.session.Session().region_name or "us-east-1"
        os.environ["AWS_REGION"] = region  # read by funnelpilot.config for the DynamoDB client
        cfn = boto3.client("cloudformation", region_name=region)
        table = cfn.describe_stack_resource(StackName=args.stack, LogicalResourceId="MetricsTable")[
            "StackResourceDetail"]["PhysicalResourceId"]
        start, end = report.day_range(args.start, args.end)
        rows = {f: report.query_rows(f, start, end, table=table) for f in [*funnels, attribution.UNATTRIBUTED]}
    else:
        if not args.snapshot.exists():
            print(f"no {args.snapshot}: run `make demo` first, or pass --stack for a deployed stack", file=sys.stderr)
            return 1
        saved = json.loads(args.snapshot.read_text())
        start, end = report.day_range(args.start or saved["start"], args.end or saved["end"])
        rows = {f: [r for r in saved["rows"].get(f, []) if not r["sk"].startswith("DAY#") or start <= r["sk"][4:14] <= end]
                for f in [*funnels, attribution.UNATTRIBUTED]}
    reports = [report.build(f, rows[f], start, end, report.step_order(f, content), abtest.splits(f, content))
               for f in funnels]
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        for rep in reports:
            print(report.table(rep) + "\n")
        print(report.revenue_summary(reports, rows[attribution.UNATTRIBUTED], steering.settings(content)[
            "attribution_window_days"]) + "\n")
    args.chart.parent.mkdir(parents=True, exist_ok=True)
    args.chart.write_text(report.chart_html(reports))
    args.chart.with_suffix(".svg").write_text(report.chart_svg(reports))
    print(f"chart: {args.chart} (and {args.chart.with_suffix('.svg').name})", file=sys.stderr if args.json else sys.stdout)
    return 0


COST_SIZES = (1_000, 10_000, 100_000, 1_000_000)


def _number(text: str, low: float, high: float) -> float | None:
    """``text`` as a number from ``low`` to ``high``, else None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if low <= value <= high else None


def cost_command(args) -> int:
    from funnelpilot_local import costs

    text = (args.contacts or "").replace(",", "").replace("_", "")
    if args.contacts is not None and not (text.isdigit() and int(text) >= 1):
        print(f"funnelpilot cost: --contacts must be a whole number of contacts, at least 1 (got {args.contacts!r})",
              file=sys.stderr)
        return 2
    new_per_month = _number(args.new_per_month, 0, 1)
    if new_per_month is None:
        print(f"funnelpilot cost: --new-per-month must be a share between 0 and 1 (got {args.new_per_month!r})",
              file=sys.stderr)
        return 2
    broadcasts = _number(args.broadcasts, 0, 100)
    if broadcasts is None:
        print(f"funnelpilot cost: --broadcasts must be a number of broadcasts a month, 0 to 100 (got {args.broadcasts!r})",
              file=sys.stderr)
        return 2
    usage = json.loads(args.usage.read_text()) if args.usage.exists() else None
    if not usage or usage.get("version") != costs.USAGE_VERSION:
        from funnelpilot_local import demo

        print("measuring: a 100-contact, 60-day simulation with one broadcast (run `make demo` to measure a larger one)...",
              file=sys.stderr)
        usage = demo.simulate(seed=7, contacts=100, days=60, state_dir=LOCAL / "cost-run", broadcast=True)["usage"]
    for size in [int(text)] if args.contacts is not None else COST_SIZES:
        print(costs.format_estimate(costs.estimate(usage, contacts=size, new_per_month=new_per_month,
                                                   broadcasts=broadcasts)) + "\n")
    return 0


def doctor_command(args) -> int:
    from funnelpilot_local import doctor
    from funnelpilot_local.runtime import ROOT

    if args.stack:
        import boto3

        session = boto3.session.Session(region_name=args.region)
        if not session.region_name:
            raise UserError("no AWS region: pass --region, or set AWS_REGION or a region in `aws configure`")
        checks = doctor.stack_checks(args.stack, session.client)
    else:
        checks = doctor.local_checks(ROOT)
    print(doctor.report(checks))
    return doctor.exit_code(checks)


def bulk_command(args) -> int:
    """``funnelpilot bulk ...``: start (or resume) a run; with ``--wait``, print progress lines
    (stderr) until the run is done, then its report (JSON)."""
    import time

    import boto3

    from funnelpilot_local.runtime import ROOT

    os.environ.setdefault("CONTENT_DIR", str(ROOT / "infra"))  # before funnelpilot.models reads the config
    from funnelpilot.bulk import progress, start, validate
    from funnelpilot.config import config
    from funnelpilot.errors import InvalidField

    if args.set:
        pairs = [p.partition("=") for p in args.set]
        action = {"properties": {k: v for k, _, v in pairs}}
    else:
        action = {k: getattr(args, k) for k in ("tag", "untag", "funnel") if getattr(args, k)}
    try:
        validate(args.segment, action)  # a wrong segment or field is said before any AWS call
        arn, table = args.state_machine_arn, None
        if args.stack:
            cfn = boto3.client("cloudformation", region_name=config().region)
            outputs = cfn.describe_stacks(StackName=args.stack)["Stacks"][0].get("Outputs", [])
            arn = next(o["OutputValue"] for o in outputs if o["OutputKey"] == "BulkStateMachineArn")
            table = cfn.describe_stack_resource(StackName=args.stack, LogicalResourceId="ContactsTable")[
                "StackResourceDetail"]["PhysicalResourceId"]
        started = start(arn, args.segment, action, run_id=args.run_id)
    except InvalidField as exc:
        print(f"error: {exc.field}: {exc.message}", file=sys.stderr)
        return 2
    print(json.dumps(started))
    if not args.wait:
        return 0
    sfn, last = boto3.client("stepfunctions", region_name=config().region), None
    while True:
        run = progress(started["run_id"], table) or {}
        execution = run.get("execution", started["execution_arn"])  # the run's current execution
        d = sfn.describe_execution(executionArn=execution)
        line = f"{run.get('members_done', 0)} members done, {run.get('executions', 0)} executions"
        if line != last:
            print(f"progress: {line}", file=sys.stderr, flush=True)
            last = line
        output = json.loads(d.get("output") or "{}")
        if d["status"] == "SUCCEEDED" and "changed" in output:
            print(d["output"])
            return 0
        if d["status"] not in ("RUNNING", "SUCCEEDED"):  # SUCCEEDED without a report: handed on to the next
            print(json.dumps({"status": d["status"], "execution": execution, "error": d.get("error"),
                              "cause": d.get("cause")}))
            return 1
        time.sleep(1)


if __name__ == "__main__":
    from funnelpilot_local import cli  # one module (and one UserError) whether run with -m or imported

    sys.exit(cli.main())
