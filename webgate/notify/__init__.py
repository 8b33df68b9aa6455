"""Notifications: stream events -> rules -> stored notifications (``notifier``) -> delivery
channels (``channels``); the aggregate alerts (``alerts``) post through the same notifier."""
