"""Consistency checker: reconciles ingest, the topics, the underwriter's decisions and the
disbursement database (offers, loans, payouts, collections, ledger) and lists every discrepancy."""

from floatbridge.audit.checks import Discrepancy, Report, Snapshot, check

__all__ = ["Discrepancy", "Report", "Snapshot", "check"]
