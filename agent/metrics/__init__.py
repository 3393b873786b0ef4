"""The metrics endpoint: ``GET /metrics`` in Prometheus's text format and ``GET /healthz``,
both read from the one status model (``agent.metrics.endpoint``), configured by the
``[metrics]`` table (``agent.metrics.settings``).

Kept empty: ``agent.config`` imports the settings module, and a package that imported
the endpoint here would import the configuration back while it loads.
"""
