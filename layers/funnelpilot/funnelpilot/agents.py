"""User agents of machines rather than people: shared by email engagement (opens, clicks)
and the site tracker (``POST /collect``). Import-light on purpose: both are hot paths."""
import re

# Security gateways, link checkers, preview bots, headless browsers and scripted HTTP clients.
# Not mail clients or their image proxies (Outlook's "Microsoft Office/16.0", GoogleImageProxy,
# YahooMailProxy): those fetch when a person opens the message.
AUTOMATED = re.compile(
    r"barracuda|mimecast|proofpoint|ppops|messagelabs|symantec|forcepoint|websense|trendmicro|"
    r"trend micro|sophos|fireeye|trellix|ironport|cisco|fortinet|fortiguard|checkpoint|check point|"
    r"zscaler|safelinks|safe links|urlscan|virustotal|linkchecker|"
    r"link checker|w3c_validator|headlesschrome|phantomjs|puppeteer|playwright|selenium|"
    r"bot\b|bot/|crawler|spider|slurp|preview|facebookexternalhit|slackbot|discordbot|"
    r"curl/|wget/|python-requests|python-urllib|aiohttp|httpx|go-http-client|java/|okhttp|"
    r"libwww|apache-httpclient|node-fetch|axios|lighthouse|pingdom|uptimerobot",
    re.IGNORECASE)
