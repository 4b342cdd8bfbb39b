"""The one send pipeline: every email SES sends passes the rate gate (``pace``) once, by priority;
a marketing email also passes the contact's frequency cap (``cap``) and the funnel's quiet hours
(``sendtime``). README "Sending"."""
