"""Recommendation models sharing one estimator contract."""
