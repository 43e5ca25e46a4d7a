"""The rule-based advance through the same backtest: a fixed advance rate on receivables, no model, no guards.

    python -m floatbridge.modeling.rule_backtest RATE_BPS -- [floatbridge backtest arguments]

Sets the underwriter's policy (FLOATBRIDGE_UNDERWRITER_*) so that every merchant with the minimum history gets
RATE_BPS of its eligible receivables whatever its PD: every PD falls in the first tier, the manipulation and risk
guards, the buyer and settled-pace counting limits and the settled-sales cap are switched off. What stays is what
any advance needs: minimum history, the delinquency freeze, the charge-off block, the per-merchant cap. Loans,
repayments and charge-offs run through the same disbursement core. Used to compare losses at equal volume: pick
RATE_BPS so that the rule lends what the model-driven policy lent (docs/model.md).
"""

from __future__ import annotations

import os
import sys

OFF = "1000000000"


def rule_env(rate_bps: int) -> dict[str, str]:
    prefix = "FLOATBRIDGE_UNDERWRITER_"
    values = {
        "PD_TIERS": "1.01,1.02,1.03", "ADVANCE_RATES_BPS": f"{rate_bps},{rate_bps},{rate_bps}",
        "SPIKE_RATIO": OFF, "SETTLED_GAP_RATIO": OFF, "SETTLED_CONVERSION_RATIO": "0",
        "CONCENTRATION_SHARE": "2", "SELF_DEALING_REPEAT_SHARE": "2", "REFUND_SURGE_RATE": "2",
        "CANCEL_SURGE_RATE": "2", "CHARGEBACK_RATE": "2", "BUYER_CAP_SHARE": "1", "REPEAT_ALLOWED_SHARE": "1",
        "RECEIVABLES_PACE_BPS": OFF, "SETTLED_SALES_MULTIPLE_BPS": OFF,
    }
    return {prefix + k: v for k, v in values.items()}


def main(argv: list[str]) -> int:
    if not argv or not argv[0].isdigit():
        print(__doc__)
        return 2
    os.environ.update(rule_env(int(argv[0])))
    from floatbridge.cli import main as cli_main

    rest = argv[2:] if len(argv) > 1 and argv[1] == "--" else argv[1:]
    return int(cli_main(["backtest", *rest]) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
