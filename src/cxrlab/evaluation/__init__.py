"""Test-set metrics, confidence intervals and paired tests."""
