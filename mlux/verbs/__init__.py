"""Verbs of the `mlux` command that are a job of their own rather than part of a subsystem:
`extract` (contrast prompts -> a saved vector) and `generate` (stream text, steered by a saved
vector). Each module is one verb, a `mlux.entry.Verb` listed in `mlux.cli`."""
