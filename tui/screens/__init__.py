"""The TUI's screens: one module per screen (modal dialogs in :mod:`.dialogs`)."""
