"""Webhooks: endpoints, the delivery worker and the payload formats."""
