"""What traffic looked like: usage records and their journal, alerts, anomaly detection."""

__all__ = ["alerts", "anomaly", "journal", "usage"]
