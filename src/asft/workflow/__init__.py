"""Configuration, the stage table, content keys, the plan and artifact folders (no torch)."""
