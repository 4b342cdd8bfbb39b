"""``funnelpilot doctor``: what stands between this setup and a delivered email, one line per check.

``doctor --stack NAME`` reads a deployed stack with the caller's credentials (CloudFormation,
SES v2, SNS, SSM: read-only calls) and checks what AWS lets it see: the stack's status and
parameters, SES production access and quota, the sender identity's verification, DKIM and MAIL
FROM status, the alarm subscription, the signing key. Without ``--stack`` it checks this machine.
Each check is ``ok``, ``warn`` (works, but not as it should for real sending) or ``FAIL``."""
import os
import re
import shutil
import socket
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

OK, WARN, FAIL = "ok", "warn", "FAIL"
# Parameter values that are someone else's (documentation domains, this machine).
_PLACEHOLDER = re.compile(r"(^|[@./])example\.(com|org|net)\b|localhost|127\.0\.0\.1", re.IGNORECASE)
_PLACEHOLDER_CHECKED = ("SenderEmail", "SalesEmail", "SiteUrl", "CorsOrigins", "AllowedRedirectHosts")
_DONE = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "IMPORT_COMPLETE"}


@dataclass(frozen=True)
class Check:
    status: str  # OK, WARN or FAIL
    name: str
    message: str


def report(checks: list[Check]) -> str:
    return "\n".join(f"{c.status:<5} {c.name:<18} {c.message}" for c in checks)


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status == FAIL for c in checks) else 0


# ---------------------------------------------------------------- a deployed stack
def stack_checks(stack: str, client) -> list[Check]:
    """``client(service)``: a boto3 client in the stack's region."""
    from botocore.exceptions import ClientError

    cfn = client("cloudformation")
    try:
        found = cfn.describe_stacks(StackName=stack)["Stacks"][0]
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ValidationError":
            raise
        return [Check(FAIL, "stack", f"no stack {stack} in {cfn.meta.region_name}: deploy it (README \"Deploy to AWS\", "
                                     "step 3) or pass the right --stack / --region")]
    params = {p["ParameterKey"]: p.get("ParameterValue", "") for p in found.get("Parameters", [])}
    status = found["StackStatus"]
    checks = [Check(OK, "stack", f"{stack}: {status}") if status in _DONE else
              Check(FAIL, "stack", f"{stack}: {status}: see its events in the CloudFormation console, fix, deploy again")]
    checks += parameter_checks(params)
    checks += ses_account_checks(client("sesv2"))
    checks += identity_checks(client("sesv2"), params)
    checks.append(alarm_check(cfn, client("sns"), stack, params))
    checks.append(signing_key_check(client("ssm"), params))
    return checks


def parameter_checks(params: dict[str, str]) -> list[Check]:
    from funnelpilot_local.template import LOCAL_VALUES

    checks = []
    for name in dict.fromkeys([*_PLACEHOLDER_CHECKED, *LOCAL_VALUES]):
        value = params.get(name, "")
        if value and (_PLACEHOLDER.search(value) or value == LOCAL_VALUES.get(name)):  # the local runtime's stand-in
            checks.append(Check(FAIL, "parameter", f"{name}={value} is a placeholder: run `sam deploy --guided` and "
                                                   "give your own"))
    if not params.get("AlarmEmail"):
        checks.append(Check(WARN, "parameter", "AlarmEmail is empty: dead letters, failed journeys and SES bounce or "
                                               "complaint rates only show in the console; set it (sam deploy --guided)"))
    if not checks:
        checks.append(Check(OK, "parameters", f"sender {params.get('SenderEmail')}, site {params.get('SiteUrl')}, "
                                              f"alarms to {params.get('AlarmEmail')}"))
    return checks


def ses_account_checks(sesv2) -> list[Check]:
    account = sesv2.get_account()
    region = sesv2.meta.region_name
    checks = []
    if not account.get("SendingEnabled", True):
        checks.append(Check(FAIL, "ses sending", f"sending is paused for this account in {region}: see the SES "
                                                 "console's account dashboard (reputation, enforcement)"))
    enforcement = account.get("EnforcementStatus", "HEALTHY")
    if enforcement != "HEALTHY":
        checks.append(Check(FAIL if enforcement == "SHUTDOWN" else WARN, "ses reputation",
                            f"{enforcement}: read the SES console's reputation metrics and AWS's message; fix the "
                            "bounce/complaint causes before sending more"))
    if account.get("ProductionAccessEnabled"):
        checks.append(Check(OK, "ses access", f"production access in {region}"))
    else:
        review = (account.get("Details") or {}).get("ReviewDetails") or {}
        if review.get("Status") == "PENDING":
            checks.append(Check(WARN, "ses access", f"sandbox in {region}; the production-access request "
                                                    f"(case {review.get('CaseId')}) is under review"))
        else:
            checks.append(Check(WARN, "ses access", f"sandbox in {region}: only verified recipients, 200 a day; request "
                                                    "production access (README \"Deploy to AWS\", step 5: aws sesv2 "
                                                    "put-account-details --production-access-enabled ...)"))
    quota = account.get("SendQuota") or {}
    sent, most = quota.get("SentLast24Hours", 0), quota.get("Max24HourSend", 0)
    checks.append(Check(WARN if most and sent >= 0.8 * most else OK, "ses quota",
                        f"{sent:,.0f} of {most:,.0f} sent in the last 24 h, {quota.get('MaxSendRate', 0):g} a second"
                        + (": near the quota, ask for more in the Service Quotas console" if most and sent >= 0.8 * most
                           else "")))
    return checks


def sender_identities(params: dict[str, str]) -> list[str]:
    """The SES identities that may verify the sender, most specific first."""
    sender = params.get("SenderEmail", "")
    domain = sender.rpartition("@")[2]
    return {"email": [sender], "domain": [domain]}.get(params.get("SenderIdentity", "email"), [sender, domain])


def identity_checks(sesv2, params: dict[str, str]) -> list[Check]:
    from botocore.exceptions import ClientError

    for identity in sender_identities(params):
        try:
            found = sesv2.get_email_identity(EmailIdentity=identity)
            break
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "NotFoundException":
                raise
    else:
        return [Check(FAIL, "sender identity", f"SES has no identity {' or '.join(sender_identities(params))}: "
                                               "SenderIdentity=existing needs one; deploy with email or domain")]
    checks = []
    if found.get("VerifiedForSendingStatus"):
        checks.append(Check(OK, "sender identity", f"{identity} verified"))
    elif "@" in identity:
        checks.append(Check(FAIL, "sender identity", f"{identity} not verified: click the link SES emailed to it "
                                                     f"(a new one: aws ses verify-email-identity --email-address "
                                                     f"{identity})"))
    else:
        checks.append(Check(FAIL, "sender identity", f"{identity} not verified: publish the DkimRecord1-3 CNAME "
                                                     "outputs in its DNS (README \"Deploy to AWS\", step 4)"))
    dkim = (found.get("DkimAttributes") or {}).get("Status", "NOT_STARTED")
    checks.append({
        "SUCCESS": Check(OK, "dkim", f"signing for {identity}"),
        "PENDING": Check(WARN, "dkim", "SES has not seen the DkimRecord1-3 CNAMEs yet: publish them (SES looks for 72 "
                                       "hours)"),
        "FAILED": Check(FAIL, "dkim", "SES did not find the DkimRecord1-3 CNAMEs within 72 hours: publish them exactly "
                                      "as the outputs say; SES checks again when they appear"),
        "TEMPORARY_FAILURE": Check(WARN, "dkim", "SES could not read the CNAMEs for a while (DNS): it keeps trying; "
                                                 "check them with dig"),
    }.get(dkim, Check(WARN, "dkim", f"{dkim}: emails are signed for amazonses.com, not your domain; "
                                    "SenderIdentity=domain signs them as yours")))
    mail_from = found.get("MailFromAttributes") or {}
    state = mail_from.get("MailFromDomainStatus")
    if not mail_from.get("MailFromDomain"):
        checks.append(Check(WARN, "mail from", "no custom MAIL FROM: SPF aligns only with amazonses.com (DMARC then "
                                               "rests on DKIM); SenderIdentity=domain with MailFromSubdomain sets one"))
    elif state == "SUCCESS":
        checks.append(Check(OK, "mail from", mail_from["MailFromDomain"]))
    else:
        checks.append(Check(FAIL if state == "FAILED" else WARN, "mail from",
                            f"{mail_from['MailFromDomain']} {state}: publish the MailFromMxRecord and MailFromSpfRecord "
                            "outputs (until then SES sends with its own MAIL FROM)"))
    return checks


def alarm_check(cfn, sns, stack: str, params: dict[str, str]) -> Check:
    address = params.get("AlarmEmail")
    if not address:
        return Check(WARN, "alarm subscription", "none (AlarmEmail is empty)")
    topic = cfn.describe_stack_resource(StackName=stack, LogicalResourceId="AlarmTopic")["StackResourceDetail"][
        "PhysicalResourceId"]
    subscriptions = [s for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic)
                     for s in page["Subscriptions"] if s["Protocol"] == "email" and s["Endpoint"] == address]
    if not subscriptions:
        return Check(FAIL, "alarm subscription", f"{address} is not subscribed to the alarm topic: deploy again "
                                                 "(the stack subscribes AlarmEmail)")
    if subscriptions[0]["SubscriptionArn"] == "PendingConfirmation":
        return Check(WARN, "alarm subscription", f"{address} has not confirmed: click \"Confirm subscription\" in the "
                                                 "email from AWS Notifications (deploy again for a new one)")
    return Check(OK, "alarm subscription", f"{address} confirmed")


def signing_key_check(ssm, params: dict[str, str]) -> Check:
    name = params.get("SigningKeyParameter", "/funnelpilot/signing-key")
    found = ssm.describe_parameters(ParameterFilters=[{"Key": "Name", "Values": [name]}])["Parameters"]
    if not found:
        return Check(FAIL, "signing key", f"no SSM parameter {name}: aws ssm put-parameter --name {name} --type "
                                          "SecureString --value \"$(openssl rand -base64 48)\"")
    if found[0]["Type"] != "SecureString":
        return Check(FAIL, "signing key", f"{name} is a {found[0]['Type']}, not a SecureString: delete it and put it "
                                          "again as a SecureString (every link in emails already sent then changes)")
    return Check(OK, "signing key", f"{name} (SecureString)")


# ---------------------------------------------------------------- this machine
def local_checks(root: Path, port: int = 3000) -> list[Check]:
    checks = [Check(OK, "python", sys.version.split()[0]) if sys.version_info >= (3, 11) else
              Check(FAIL, "python", f"{sys.version.split()[0]}: funnelpilot needs 3.11 or later")]
    checks.append(_pins(root))
    checks.append(_funnels(root))
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            checks.append(Check(OK, "port", f"{port} free for make serve"))
        except OSError:
            checks.append(Check(WARN, "port", f"{port} is in use (another make serve?): stop it, or PORT=8080 make serve"))
    bin_dir = Path(sys.executable).parent
    for tool, why in (("python3.12", "sam build builds the functions with it"), ("sam", "to deploy"),
                      ("aws", "the deploy guide's commands (signing key, SES)")):
        found = shutil.which(tool) or shutil.which(tool, path=str(bin_dir))
        checks.append(Check(OK, tool, found) if found else Check(WARN, tool, f"not on PATH: needed {why}"))
    chromium = Path("/usr/bin/chromium")
    checks.append(Check(OK, "chromium", str(chromium)) if chromium.exists() else
                  Check(WARN, "chromium", "missing: the browser test is skipped (apt-get install chromium)"))
    return checks


def _pins(root: Path) -> Check:
    """Every ``name==version`` of pyproject.toml installed at that version."""
    import tomllib

    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [d for group in project.get("optional-dependencies", {}).values() for d in group]
    wrong = []
    for spec in wanted:
        name, _, version = spec.partition("==")
        name = name.split("[")[0].strip()
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        if have != version.strip():
            wrong.append(f"{name} {have or 'missing'} (pinned {version.strip()})")
    if wrong:
        return Check(FAIL, "dependencies", f"{', '.join(wrong)}: run make (any target) to refresh .venv")
    return Check(OK, "dependencies", f"{len(wanted)} pinned distributions installed")


def _funnels(root: Path) -> Check:
    from funnelpilot.funnel_spec import FunnelError
    from funnelpilot_local import compiler

    os.environ.setdefault("CONTENT_DIR", str(root / "infra"))
    try:
        expected = compiler.build(root)
    except (FunnelError, compiler.CompileError) as exc:
        return Check(FAIL, "funnels", f"do not compile: {str(exc).splitlines()[0]} (make funnels says all)")
    stale = [p for p, text in expected.items() if not p.exists() or p.read_text() != text]
    stale += compiler.stale_machines(root, expected)
    if stale:
        return Check(WARN, "funnels", f"{len(stale)} generated files out of date: make funnels")
    return Check(OK, "funnels", f"{sum(p.name.endswith('.asl.json') for p in expected)} state machines up to date")
