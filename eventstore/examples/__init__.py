"""Examples of using room-supervisor's event store from your own code (see docs/sdk.md)."""
