"""Helpers the tests share (fixtures stay in the conftest.py files and call these):

- `specs`: tiny job specs as YAML text from the `TINY_*` configs; writing and loading them;
- `processes`: the `sar` command line, free ports, processes read from /proc, waiting on a condition;
- `servers`: the MLflow and S3 servers on loopback, and an experiment's runs;
- `holds`: hold points, to stop a process at an exact step while a test acts."""
