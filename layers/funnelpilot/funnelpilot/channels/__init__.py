"""Ways funnelpilot reaches people and systems besides the marketing email: sales alerts
(email, Slack), outbound webhooks (EventBridge API destinations)."""
