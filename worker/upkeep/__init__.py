"""Keeping vendors in step beyond webhooks: polling, reconciliation and backfill."""
