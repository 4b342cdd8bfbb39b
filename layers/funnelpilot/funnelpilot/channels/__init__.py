"""Ways funnelpilot reaches people and systems besides the marketing email: sales alerts
(email, Slack, SMS), outbound webhooks (EventBridge API destinations), SMS (``sms``: AWS End User
Messaging SMS) and the phone numbers it needs (``phone``)."""
