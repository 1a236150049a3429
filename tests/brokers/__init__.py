"""Broker adapter tests: the contract every adapter passes, codec, embedded server."""
