"""The web process: the Flask receiver, health, metrics, the status page and OpenAPI."""
