"""Thin Ray actors around the library stages (no algorithms here)."""
