"""Ways funnelpilot reaches people and systems: email (``emails``: templates, tracking, SES;
``mime``: the raw message), sales alerts (email, Slack, SMS), outbound webhooks (EventBridge API
destinations), SMS (``sms``: AWS End User Messaging SMS) and the phone numbers it needs (``phone``)."""
