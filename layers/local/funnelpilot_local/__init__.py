"""The local runtime: template.yaml's wiring executed on moto, in one Python process.

Not used on AWS (it imports moto, a development dependency, only when started).
"""
