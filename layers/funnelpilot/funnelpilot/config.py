"""Typed settings read from the environment that template.yaml sets on every function."""
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path


def _csv(name: str) -> tuple[str, ...]:
    return tuple(v.strip().lower() for v in os.environ.get(name, "").split(",") if v.strip())


@dataclass(frozen=True)
class Config:
    table: str
    metrics_table: str
    bus: str
    signing_key_parameter: str  # SSM SecureString name
    public_url: str
    site_url: str
    sender: str
    from_name: str  # the From header's display name (FromName)
    reply_to: str  # Reply-To of every email (ReplyTo; empty: the sender)
    postal_address: str  # in every marketing footer (PostalAddress; CAN-SPAM)
    sales_email: str
    ses_configuration_set: str
    redirect_hosts: tuple[str, ...]
    cors_origins: tuple[str, ...]
    content_dir: Path
    collect_limit_per_ip: int
    collect_limit_per_contact: int
    signup_limits: tuple[tuple[str, int, int], ...]  # (field, limit, window seconds): "ip", then "email"
    region: str
    schedule_group: str = "default"  # EventBridge Scheduler group for one-time schedules (repurchase)
    scheduler_role_arn: str = ""  # role Scheduler assumes to put events on the bus
    bus_arn: str = ""
    sales_webhook: bool = False  # SalesWebhookUrl set: sales alerts also go to it (channels.alerts)
    sms_origination: str = ""  # phone number or pool ARN SMS are sent from; empty: SMS off (channels.sms)
    sms_configuration_set: str = ""  # its delivery events go to the stack's SNS topic
    send_queue_url: str = ""  # SendQueue: broadcast chunks for the send worker (funnelpilot.broadcasts)
    broadcast_schedule_group: str = "default"  # Scheduler group of the broadcasts' one-time schedules


@cache
def config() -> Config:
    """Settings from the environment; defaults are the local runtime's resource names."""
    env = os.environ.get
    return Config(
        table=env("TABLE_NAME", "ContactsTable"),
        metrics_table=env("METRICS_TABLE_NAME", "MetricsTable"),
        bus=env("BUS_NAME", "funnelpilot"),
        signing_key_parameter=env("SIGNING_KEY_PARAMETER", "/funnelpilot/signing-key"),
        public_url=env("PUBLIC_URL", "http://127.0.0.1:3000").rstrip("/"),
        site_url=env("SITE_URL", "https://example.com").rstrip("/"),
        sender=env("SENDER_EMAIL", "hello@example.com"),
        from_name=env("FROM_NAME", ""),
        reply_to=env("REPLY_TO", "") or env("SENDER_EMAIL", "hello@example.com"),
        postal_address=env("POSTAL_ADDRESS", "").strip(),
        sales_email=env("SALES_EMAIL", "sales@example.com"),
        ses_configuration_set=env("SES_CONFIGURATION_SET", ""),
        redirect_hosts=_csv("ALLOWED_REDIRECT_HOSTS"),
        cors_origins=_csv("CORS_ORIGINS"),
        content_dir=Path(env("CONTENT_DIR", "/opt")),
        collect_limit_per_ip=int(env("COLLECT_LIMIT_PER_IP", "120")),  # site events a minute
        collect_limit_per_contact=int(env("COLLECT_LIMIT_PER_CONTACT", "60")),
        # Signups accepted per source IP and per address in a fixed window (README, "HTTP API").
        signup_limits=(("ip", int(env("SIGNUP_LIMIT_PER_IP", "20")), int(env("SIGNUP_WINDOW_PER_IP", "3600"))),
                       ("email", int(env("SIGNUP_LIMIT_PER_ADDRESS", "5")),
                        int(env("SIGNUP_WINDOW_PER_ADDRESS", "86400")))),
        region=env("AWS_REGION", env("AWS_DEFAULT_REGION", "us-east-1")),
        schedule_group=env("SCHEDULE_GROUP", "default"),
        scheduler_role_arn=env("SCHEDULER_ROLE_ARN", ""),
        bus_arn=env("BUS_ARN", ""),
        sales_webhook=env("SALES_WEBHOOK", "") == "on",
        sms_origination=env("SMS_ORIGINATION_IDENTITY", ""),
        sms_configuration_set=env("SMS_CONFIGURATION_SET", ""),
        send_queue_url=env("SEND_QUEUE_URL", ""),
        broadcast_schedule_group=env("BROADCAST_SCHEDULE_GROUP", "default"),
    )
