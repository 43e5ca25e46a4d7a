"""Observability helpers: Prometheus HTTP client, query extraction from the committed dashboards and
alert rules, the Kafka consumer-lag exporter and the `floatbridge report` HTML renderer."""
