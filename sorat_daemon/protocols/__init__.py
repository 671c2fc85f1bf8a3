"""Pure translation of each client protocol, no I/O: a client's body checked and turned into sorat's
terms (a ``turn.TurnRequest``), the agent's events rendered back into that protocol's chunks, items or
blocks, and errors into its shape. Nothing here knows HTTP or the providers."""
