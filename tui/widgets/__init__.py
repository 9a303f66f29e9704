"""Reusable widgets of the TUI's screens."""
