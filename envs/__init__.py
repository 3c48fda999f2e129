"""Gymnasium environments (MuJoCo lane keeping), registered on import under the ``LTC/`` namespace."""
