"""funnelpilot: the domain library shared by every Lambda (deployed as a layer).

Modules are named after what a marketer would call them: contacts, funnels, sequence,
emails, tokens, bus. Handlers in functions/ only parse events and shape responses.
"""
