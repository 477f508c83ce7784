"""Baseline detoxification methods that IF-Guide is compared with."""
