"""Recorded payloads and small sample files the tests read."""
