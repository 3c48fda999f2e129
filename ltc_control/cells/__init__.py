"""Recurrent cells: LTC, CfC and baselines behind one contract."""
