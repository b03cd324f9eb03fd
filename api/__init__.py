"""Token Hub's HTTP API for people, gateways and tools (`tokenhub.api`).

Reads come from the read queries each service keeps over its own schema,
through a database role that can only read; changes are published as the
same events the CLI publishes; quota checks answer from state kept in memory
from the topics. Keys carry roles (`access.py`); `app.py` wires it all."""
