"""The gateway's upkeep and observation: the health sweep and retention (``health``), the broker
queue sampler (``queues``) and the Prometheus exposition at ``GET /metrics`` (``prometheus``)."""
