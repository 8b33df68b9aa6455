"""Example projects using celery-tracking (``examples.demo_app`` drives ``tracker demo``)."""
