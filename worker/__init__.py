"""oppsync's worker side: settings, the Celery app and tasks, the sync pipeline, the CLI."""

__version__ = "0.1.0"
