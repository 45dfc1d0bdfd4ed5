"""Runnable experiments and tools that ship with mlux (`python -m mlux.experiments.<name>`)."""
