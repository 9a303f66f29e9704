"""Not built yet: registers nothing, so its requests answer `unimplemented`."""
